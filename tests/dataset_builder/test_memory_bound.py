"""Memory is bounded by a partition, not by the largest page: a page over the page cap is counted from the spill
index and its frames are never read (asserted on counts of frames read, never on time or RSS)."""
import numpy as np

from db_helpers import BIG_PAGE, FAKE_EMBEDDER

from dataset_builder import build_dataset, config_from_dict, local, phases, spill
from dataset_builder.counts import Counts
from dataset_builder.grouping import group_pages
from dataset_builder.records import Record, hash64
from dataset_builder.spill import read_run_pages, read_run_partition, write_run


def _cfg(out, run_size=1000, **group):
    return config_from_dict({
        "inputs": [{"type": "factory", "factory": "db_helpers:big_page_records"}],
        "output_dir": str(out), "progress": False, "records_per_partition": 1000, "run_size": run_size,
        "embedder": dict(FAKE_EMBEDDER), "expert": {"type": "held_out"},
        "group": {"max_cluster_size": 10, **group}})


def test_frames_of_an_oversized_page_are_never_read(tmp_path, monkeypatch):
    read_pages, runs = [], set()
    real = spill.iter_frames

    def counting(data, path="<bytes>"):
        for meta, blob in real(data, path):
            if "/ingest/" in str(path):  # the spill runs (not the later cluster files)
                read_pages.append(meta["page_url"])
            yield meta, blob

    def pages_of(run, lo, hi):
        runs.add(run)
        return spill.read_run_pages(run, lo, hi)

    monkeypatch.setattr(spill, "iter_frames", counting)
    monkeypatch.setattr(local, "read_run_pages", pages_of)
    monkeypatch.setattr(phases, "DECODE_BATCH", 8)  # with run_size 16: 4 spill runs
    stats = build_dataset(_cfg(tmp_path / "out", run_size=16, max_page_records=20))
    assert stats["partitions"] == 1 and stats["counts"]["read"]["records"] == 55
    # the big page is spread over the runs with fewer than 20 records in each: the cap counts across runs
    assert len(runs) >= 3
    assert BIG_PAGE not in read_pages and len(read_pages) == 15
    g = stats["counts"]["group"]
    assert g["in"] == 55 and g["pages"] == 4 and g["out"] == 15
    assert g["dropped"]["cluster_too_large"] == 40 and g["clusters_dropped"]["too_large"] == 1
    assert stats["counts"]["write"]["clusters"] == 3


def test_default_page_cap_is_twice_the_max_cluster_size(tmp_path):
    assert _cfg(tmp_path / "a").max_page_records == 20
    # a page between max_cluster_size and the cap is read, then dropped by size as before
    stats = build_dataset(_cfg(tmp_path / "b", max_page_records=40))
    assert stats["counts"]["group"]["dropped"]["cluster_too_large"] == 40


def _records(page: str, n: int) -> list[Record]:
    return [Record(key=f"{page}{i}", source="t", page_url=page, page_key=page, page_hash=hash64(page),
                   image_url=f"{page}/{i}", text="", image=b"x", width=96, height=96, content_hash=hash64(f"{page}{i}"))
            for i in range(n)]


def test_group_pages_applies_the_same_cap_to_records_in_memory():
    """The Ray backend hands group_pages every record; it must count exactly what the local index path counts."""
    recs = _records("https://e.com/big", 25) + _records("https://e.com/ok", 5)
    counts = Counts()
    clusters = group_pages(recs, np.zeros(0, np.uint64), min_size=4, max_size=10, counts=counts, max_page_records=20)
    assert [c.page_key for c in clusters] == ["https://e.com/ok"]
    assert counts == {"group.in": 30, "group.pages": 2, "group.dropped.cluster_too_large": 25,
                      "group.clusters_dropped.too_large": 1, "group.out": 5, "group.clusters_out": 1}


def test_read_run_partition_skips_pages_in_one_gap(tmp_path):
    recs = _records("https://e.com/a", 3) + _records("https://e.com/b", 4) + _records("https://e.com/c", 2)
    write_run(tmp_path, 0, recs)
    run = tmp_path / "run-00000.bin"
    assert sorted(read_run_pages(run, 0, 2**64).tolist()) == sorted(r.page_hash for r in recs)
    skip = np.array([hash64("https://e.com/b")], dtype=np.uint64)
    got = read_run_partition(run, 0, 2**64, skip_pages=skip)
    assert sorted(r.key for r in got) == sorted(r.key for r in recs if r.page_url != "https://e.com/b")
    assert len(read_run_partition(run, 0, 2**64)) == 9
