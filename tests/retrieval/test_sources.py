"""Webdataset shard reading: unreadable, truncated and corrupt shards give exact reasons."""

import gzip
import tarfile

import pytest

from retrieval import ShardOpenError
from retrieval.sources import ShardReader, iter_webdataset_shard
from retrieval_testdata import img2dataset_sample, write_shard


@pytest.fixture()
def good_shard(tmp_path):
    path = tmp_path / "good.tar"
    write_shard(path, [img2dataset_sample(f"k{i}", i, f"caption {i}") for i in range(4)])
    return path


def _errors(path):
    return [(s.key, s.error) for s in ShardReader(path) if s.error]


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file (0 bytes)"),
    (b"plain text, not a tar archive\n" * 30, "not a tar archive (invalid header in the first block)"),
])
def test_unopenable_shards_raise_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    with pytest.raises(ShardOpenError) as info:
        ShardReader(path)
    assert info.value.reason == reason and str(path) in str(info.value)
    with pytest.raises(ValueError):  # the old generator API raises on first use
        list(iter_webdataset_shard(path))
    with pytest.raises(ShardOpenError, match="No such file"):
        ShardReader(tmp_path / "missing.tar")


def test_truncated_inside_an_image_member(good_shard, tmp_path):
    raw = good_shard.read_bytes()
    start = raw.index(b"k2.jpg\0") + 512  # data of k2.jpg follows its 512-byte header
    path = tmp_path / "cut.tar"
    path.write_bytes(raw[:start + 50])
    samples = list(ShardReader(path))
    assert [s.key for s in samples] == ["k0", "k1", "k2"]
    assert samples[2].error == (f"shard is truncated inside member k2.jpg: it needs "
                                f"{tarfile.open(good_shard).getmember('k2.jpg').size} bytes from byte {start} "
                                f"but the file ends at byte {start + 50}, after 2 samples; sample 'k2' dropped; the rest of the "
                                "shard is lost")
    assert samples[2].location["path"] == str(path) and samples[1].error is None


def test_corrupt_header_in_the_middle_is_not_a_silent_end(good_shard, tmp_path):
    raw = bytearray(good_shard.read_bytes())
    header = raw.index(b"k3.jpg\0")
    raw[header:header + 512] = b"\x07" * 512  # garbage where k3's first header should be
    path = tmp_path / "corrupt.tar"
    path.write_bytes(bytes(raw))
    errors = _errors(path)
    skipped = tarfile.open(good_shard).getmember("k3.txt").offset - header
    # Reading resumes at k3's next member: the damaged stretch is reported, and k3 has no image left.
    assert errors == [("corrupt.tar:<corrupt>", f"{skipped} bytes from byte {header} are not valid tar headers "
                                                "(bad checksum or zeroed block); the members inside them are lost"),
                      ("k3", "no image member (found: ['json', 'txt'])")]


def test_compressed_and_clean_shards_have_no_errors(good_shard, tmp_path):
    assert _errors(good_shard) == []
    gz = tmp_path / "good.tar.gz"
    gz.write_bytes(gzip.compress(good_shard.read_bytes()))
    reader = ShardReader(gz)
    samples = list(reader)
    assert reader.compressed and [s.key for s in samples] == ["k0", "k1", "k2", "k3"]
    assert reader.position == gz.stat().st_size
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    errors = _errors(cut)
    assert errors and all("0x" not in reason for _, reason in errors)
    assert "EOFError" in errors[-1][1] or "truncated" in errors[-1][1]


def test_reasons_never_carry_object_reprs():
    from retrieval import ImageReadError, open_image

    with pytest.raises(ImageReadError) as info:
        open_image(b"not an image at all", name="k9")
    assert "object at" not in info.value.reason and "not a recognised image format" in info.value.reason
    assert ImageReadError("x", "cannot identify image file <_io.BytesIO object at 0x7fab6c6055d0>").reason == \
        "cannot identify image file"
