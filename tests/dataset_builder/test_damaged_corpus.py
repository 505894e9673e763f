"""A build over a good corpus mixed with damaged and odd records (dataset_builder.faults) exits 0, keeps
exactly the good clusters, and accounts for every record: read = kept by decode + each counted drop."""
import json
import os

import pytest

from dataset_builder import faults
from dataset_builder.cli import main as cli_main
from dataset_builder.config import DecodeConfig, GroupConfig
from dataset_builder.counts import Counts
from dataset_builder.decode import Rejected, decode_batch, read_image_file
from dataset_builder.records import RawRecord
from dataset_builder.testing import jpeg_bytes, random_image

from db_helpers import planted_config, write_config


def _flat(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.fixture(scope="module")
def damaged_build(planted, tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    corpus = faults.write_damaged_corpus(root / "corpus")
    cfg = planted_config(planted["shards"], root / "out",
                         decode={"max_file_bytes": faults.MAX_FILE_BYTES, "path_root": corpus.image_root})
    cfg["inputs"] += [{"type": "webdataset", "paths": corpus.webdataset},
                      {"type": "jsonl", "path": corpus.manifest, "image_root": corpus.image_root}]
    code = cli_main(["build-dataset", "--config", str(write_config(root / "cfg.json", cfg))])
    stats = json.loads((root / "out" / "stats.json").read_text())
    return {"code": code, "stats": stats, "counts": _flat(stats["counts"]), "corpus": corpus,
            "written": corpus.records_written + len(planted["rows"])}


def test_exit_0_and_only_the_good_clusters_are_kept(damaged_build, planted):
    from dataset_builder import read_icl_shard

    assert damaged_build["code"] == 0
    assert damaged_build["corpus"].records_written >= 60  # the damaged part alone
    out = damaged_build["corpus"].manifest.rsplit("/corpus/", 1)[0] + "/out"
    pages = {s["json"]["page_key"] for p in sorted(os.listdir(out)) if p.startswith("icl-")
             for s in read_icl_shard(os.path.join(out, p))}
    assert pages == set(planted["expected"]["kept_pages"])


def test_every_record_is_accounted_for(damaged_build):
    c, corpus = damaged_build["counts"], damaged_build["corpus"]
    read_drops = sum(v for k, v in c.items() if k.startswith("read.dropped."))
    assert read_drops == 2 + 2  # two duplicate keys; two samples torn mid-member
    seen = c["read.records"] + read_drops + c["read.errors.bad_json_line"]
    assert seen + corpus.unseen == damaged_build["written"]
    decode_drops = sum(v for k, v in c.items() if k.startswith("decode.dropped."))
    assert c["decode.in"] == c["read.records"] == c["decode.out"] + decode_drops


def test_every_damaged_shard_is_listed_with_its_file(damaged_build):
    stats, corpus = damaged_build["stats"], damaged_build["corpus"]
    errors = {(e["file"], e["reason"]) for e in stats["read_errors"] if e["reason"] in
              ("tar_truncated", "tar_corrupt", "tar_unreadable")}
    assert errors == {(path, f"tar_{reason}") for path, reason in corpus.damaged_shards.items()}
    c = damaged_build["counts"]
    assert c["read.errors.tar_truncated"] == 5 and c["read.errors.tar_corrupt"] == 3
    assert c["read.errors.tar_unreadable"] == 1 and c["read.skipped.tar_empty"] == len(corpus.empty_shards) == 3
    listed = {e["file"] for e in stats["read_errors"] if e["reason"] == "tar_empty"}
    assert listed == set(corpus.empty_shards)


def test_odd_records_are_counted_drops_or_counted_repairs(damaged_build):
    c = damaged_build["counts"]
    assert c["read.errors.json_not_object"] == 8 + 3  # 8 sidecars + 3 manifest lines (list, string, null)
    assert c["read.errors.bad_json"] == 4
    assert c["read.repaired.caption_not_text"] == 8 and c["read.repaired.page_url_not_text"] == 6 + 1
    assert c["read.repaired.text_not_text"] == 1 and c["read.repaired.image_bytes_not_bytes"] == 1
    assert c["read.repaired.image_path_not_text"] == 1
    assert c["decode.repaired.page_url_lone_surrogate"] == 3 + 1
    assert c["decode.repaired.text_lone_surrogate"] == 3 + 1
    # image URLs: 3 set so, and 3 that hold a key whose member name is not UTF-8
    assert c["decode.repaired.image_url_lone_surrogate"] == 3 + 3 and c["decode.repaired.key_lone_surrogate"] == 3
    assert c["read.skipped.tar_member_directory"] == 1 + 2 and c["read.skipped.tar_member_link"] == 1
    assert c["read.skipped.tar_member_hidden"] == 2 and c["read.skipped.tar_member_no_extension"] == 1
    assert c["read.dropped.duplicate_key"] == 2
    assert c["read.skipped.tar_member_too_large"] == 1  # skipped unread; its sample is then a no_image drop


def test_manifest_paths_are_read_safely(damaged_build):
    c = damaged_build["counts"]
    assert c["decode.dropped.not_a_regular_file"] == 2       # the FIFO and the folder (the build did not hang)
    assert c["decode.dropped.outside_path_root"] == 4        # ../outside.jpg, a link out, /dev/zero, a link to it
    assert c["decode.dropped.file_too_large"] == 1 and c["decode.dropped.missing_file"] == 1
    assert c["decode.dropped.unreadable_file"] == 1          # a path with a lone surrogate


def test_read_image_file_refuses_special_files_without_a_root(tmp_path):
    cfg = DecodeConfig(max_file_bytes=1000)
    os.mkfifo(tmp_path / "fifo")
    for path, reason in [("/dev/zero", "not_a_regular_file"), (str(tmp_path / "fifo"), "not_a_regular_file"),
                         (str(tmp_path), "not_a_regular_file"), (str(tmp_path / "none"), "missing_file"),
                         ("bad\0path", "unreadable_file")]:
        with pytest.raises(Rejected) as info:
            read_image_file(path, cfg)
        assert info.value.reason == reason, path
    (tmp_path / "big").write_bytes(bytes(1001))
    with pytest.raises(Rejected, match="file_too_large"):
        read_image_file(str(tmp_path / "big"), cfg)
    (tmp_path / "ok").write_bytes(bytes(1000))
    assert read_image_file(str(tmp_path / "ok"), cfg) == bytes(1000)
    for root in (None, str(tmp_path)):  # a path the file system cannot even encode
        with pytest.raises(Rejected, match="unreadable_file"):
            read_image_file(str(tmp_path / "cut emoji \ud83d.jpg"), DecodeConfig(path_root=root))


def test_an_unforeseen_failure_names_the_file_and_record(monkeypatch):
    from dataset_builder import decode

    def broken(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(decode, "normalize_page_url", broken)
    raw = RawRecord(key="00003:rec\udc80", source="/data/shard-7.tar", page_url="https://e.org/p", image_url=None,
                    text="t", image_bytes=jpeg_bytes(random_image("x")))
    with pytest.raises(decode.RecordError, match=r"^/data/shard-7.tar: record 00003:rec\\udc80: KeyError"):
        decode_batch([raw], DecodeConfig(), GroupConfig(), Counts())
