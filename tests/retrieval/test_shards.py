"""The one webdataset tar reader (retrieval.shards): every damaged or odd shard is reported with a reason
that names the file; nothing is lost silently. The shards are damaged here, on purpose."""

import os

import pytest

from retrieval import testing as faults
from retrieval.shards import expand_pattern, expand_shard_patterns, iter_tar_samples

N = 10


def _samples(n=N):
    return [(f"k{i:03d}", {"jpg": os.urandom(700 + i), "txt": f"caption {i}".encode(), "json": b"{}"})
            for i in range(n)]


def _read(tmp_path, data: bytes, name="shard.tar"):
    path = tmp_path / name
    path.write_bytes(data)
    problems = []
    samples = list(iter_tar_samples(path, problems.append))
    assert all(str(path) in str(p) for p in problems)  # every report names the file
    return samples, problems


def _reasons(problems):
    return [p.reason for p in problems]


def test_a_good_shard_reads_whole_with_no_problems(tmp_path):
    samples, problems = _read(tmp_path, faults.tar_bytes(_samples()))
    assert [s.key for s in samples] == [f"k{i:03d}" for i in range(N)] and problems == []
    assert samples[3].members["txt"] == b"caption 3" and set(samples[0].members) == {"jpg", "txt", "json"}


def test_cut_at_a_member_boundary_is_counted_as_truncated(tmp_path):
    # 3 members per sample: cutting before member 9 keeps samples 0-2 whole and loses the rest.
    samples, problems = _read(tmp_path, faults.cut_at_header(faults.tar_bytes(_samples()), 9))
    assert len(samples) == 3 and _reasons(problems) == ["truncated"]
    assert "without the end-of-archive marker" in problems[0].detail


def test_cut_inside_a_member_drops_that_sample_and_says_where(tmp_path):
    samples, problems = _read(tmp_path, faults.cut_inside_member(faults.tar_bytes(_samples()), 12))
    assert len(samples) == 4 and _reasons(problems) == ["truncated"]  # sample k004 was being read
    assert problems[0].drops_sample and problems[0].key == "k004"
    assert "inside member k004.jpg" in problems[0].detail and "after 4 samples" in problems[0].detail


def test_cut_inside_a_header_is_truncated(tmp_path):
    data = faults.tar_bytes(_samples())
    at = faults.member_offsets(data)[9][1]
    samples, problems = _read(tmp_path, data[:at + 200])
    assert len(samples) == 3 and _reasons(problems) == ["truncated"] and "inside a tar header" in problems[0].detail


@pytest.mark.parametrize("damage", [faults.bad_checksum, faults.zeroed_header])
def test_a_bad_header_mid_shard_is_skipped_and_counted_and_reading_goes_on(tmp_path, damage):
    samples, problems = _read(tmp_path, damage(faults.tar_bytes(_samples()), 6))  # k002.jpg's header
    assert [s.key for s in samples] == [f"k{i:03d}" for i in range(N)]  # nothing after it is lost
    assert _reasons(problems) == ["corrupt"] and "not valid tar headers" in problems[0].detail
    assert set(samples[2].members) == {"txt", "json"}  # only the damaged member is gone


def test_a_torn_gzip_shard_is_truncated(tmp_path):
    data = faults.tar_bytes(_samples())
    offsets = faults.member_offsets(data)
    # torn between samples: the samples before are whole and kept
    samples, problems = _read(tmp_path, faults.torn_gzip(data, offsets[9][1]), "shard.tar.gz")
    assert len(samples) == 3 and _reasons(problems) == ["truncated"] and not problems[0].drops_sample
    assert "EOFError" in problems[0].detail
    # torn inside a member: that sample is dropped, and counted
    samples, problems = _read(tmp_path, faults.torn_gzip(data, offsets[9][2] + 100), "shard.tar.gz")
    assert len(samples) == 3 and problems[0].drops_sample and problems[0].key == "k003"


def test_trailing_garbage_is_corrupt(tmp_path):
    samples, problems = _read(tmp_path, faults.tar_bytes(_samples(3)) + b"garbage" * 300)
    assert len(samples) == 3 and _reasons(problems) == ["corrupt"]


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (bytes(1024), "empty"),  # only the end-of-archive marker
    (faults.tar_bytes([], [(faults.dir_info("a"), None), (faults.dir_info("b"), None)]), "empty"),
    (b"plain text, not a tar archive\n" * 40, "unreadable"),
])
def test_empty_and_unreadable_shards_are_reported(tmp_path, data, reason):
    samples, problems = _read(tmp_path, data)
    assert samples == [] and _reasons(problems)[-1] == reason


def test_members_that_belong_to_no_sample_are_counted_one_reason_each(tmp_path):
    extra = [(faults.dir_info("folder"), None), (faults.symlink_info("link.jpg", "k000.jpg"), None),
             (faults.file_info(".DS_Store", 3), b"abc"), (faults.file_info("._k000.jpg", 3), b"abc"),
             (faults.file_info("README", 3), b"abc")]
    samples, problems = _read(tmp_path, faults.tar_bytes(_samples(2), extra))
    assert [s.key for s in samples] == ["k000", "k001"]
    assert _reasons(problems) == ["member_directory", "member_link", "member_hidden", "member_hidden",
                                  "member_no_extension"]
    assert not any(p.drops_sample for p in problems)


def test_members_over_the_cap_are_skipped_unread(tmp_path):
    path = tmp_path / "big.tar"
    path.write_bytes(faults.tar_bytes([("a", {"jpg": bytes(5000), "txt": b"caption"}), ("b", {"jpg": bytes(10)})]))
    problems = []
    samples = list(iter_tar_samples(path, problems.append, max_member_bytes=1000))
    assert [s.members for s in samples] == [{"txt": b"caption"}, {"jpg": bytes(10)}]
    assert _reasons(problems) == ["member_too_large"] and "5000 bytes" in problems[0].detail


def test_duplicate_keys_keep_the_first_sample_and_count_the_second(tmp_path):
    s = _samples(4)
    # adjacent repeat of k001, and k000 again at the end (webdataset would merge or overwrite them)
    samples, problems = _read(tmp_path, faults.tar_bytes(s[:2] + [s[1]] + s[2:] + [s[0]]))
    assert [x.key for x in samples] == ["k000", "k001", "k002", "k003"]
    assert _reasons(problems) == ["duplicate_key", "duplicate_key"]
    assert [p.key for p in problems] == ["k001", "k000"] and all(p.drops_sample for p in problems)
    assert samples[1].members == s[1][1]


def test_expanders(tmp_path):
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(faults.tar_bytes(_samples(1)))
    (tmp_path / "notes.txt").write_text("x")
    names = [os.path.basename(p) for p in expand_pattern(str(tmp_path / "{00000..00002}.tar"))]
    assert names == ["00000.tar", "00001.tar", "00002.tar"]
    assert [p.name for p in expand_shard_patterns(str(tmp_path / "*.tar"))] == names
    assert [p.name for p in expand_shard_patterns(tmp_path)] == names  # a folder: its tars
    assert expand_pattern(str(tmp_path / "plain.tar")) == [str(tmp_path / "plain.tar")]  # existence: the caller's
    with pytest.raises(FileNotFoundError, match="matches no files"):
        expand_pattern(str(tmp_path / "*.tgz"))
    with pytest.raises(FileNotFoundError, match="shard not found"):
        expand_shard_patterns(str(tmp_path / "missing.tar"))
