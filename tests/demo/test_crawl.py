"""The synthetic crawl: img2dataset layout (webdataset and the builder's reader), ground truth, scoring."""
from __future__ import annotations

import io
import json
import tarfile

import pytest
import webdataset as wds

from dataset_builder.counts import Counts
from dataset_builder.inputs import expand_inputs, read_unit
from suti.demo.crawl import (CrawlConfig, read_builder_clusters, read_ground_truth, score_cluster_assignments,
                             score_clusters, write_crawl)
from suti.demo.heldout import is_heldout
from suti.demo.world import Subject

SMALL = CrawlConfig(shop_pages=8, junk_pages=2, images_per_page=(3, 5), sites=3, broken_prob=0.1,
                    boilerplate_prob=0.6, image_sizes=(48, 64), samples_per_shard=20, seed=3)


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    out = tmp_path_factory.mktemp("crawl")
    truth = write_crawl(out, SMALL, progress=False)
    return out, truth


def test_webdataset_reads_the_layout(crawl):
    out, truth = crawl
    shards = sorted(str(p) for p in out.glob("*.tar"))
    assert len(shards) >= 2
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert len(samples) == len(truth["records"])
    for s in samples:
        assert {"jpg", "txt", "json"} <= set(s)
        meta = json.loads(s["json"])
        assert meta["status"] == "success" and meta["key"] == s["__key__"]
        assert {"url", "caption", "page_url"} <= set(meta) and meta["caption"] == s["txt"].decode()
        rec = truth["records"][s["__key__"]]
        assert rec["url"] == meta["url"] and rec["page_url"] == meta["page_url"]


def test_dataset_builder_reader_and_page_kinds(crawl):
    out, truth = crawl
    counts, errors = Counts(), []
    units = expand_inputs([{"type": "webdataset", "path": str(out / "*.tar")}])
    records = [r for u in units for r in read_unit(u, counts, errors)]
    assert not errors and len(records) == len(truth["records"])
    assert all(r.page_url and r.image_url and r.image_bytes for r in records)
    kinds = {r["kind"] for r in truth["records"].values()}
    assert kinds == {"subject", "boilerplate", "broken"}
    assert {r["page_kind"] for r in truth["records"].values()} == {"shop", "junk"}
    # boilerplate repeats under one URL across pages; broken files are really broken
    by_url = {}
    for r in truth["records"].values():
        if r["kind"] == "boilerplate":
            by_url.setdefault(r["url"], set()).add(r["page_url"])
    assert any(len(pages) > 1 for pages in by_url.values())
    broken = [k for k, r in truth["records"].items() if r["kind"] == "broken"]
    from PIL import Image
    raw = {r.image_url: r.image_bytes for r in records}
    for k in broken:
        with pytest.raises(Exception):
            Image.open(io.BytesIO(raw[truth["records"][k]["url"]])).load()
    # shop pages show one subject; no crawl subject is held out
    shop = {}
    for r in truth["records"].values():
        if r["kind"] == "subject" and r["page_kind"] == "shop":
            shop.setdefault(r["page_url"], set()).add(r["subject"])
    assert shop and all(len(s) == 1 for s in shop.values())
    assert not any(is_heldout(Subject.from_id(sid)) for sid in truth["subjects"])


def test_deterministic_bytes_and_resume(crawl, tmp_path):
    out, truth = crawl
    again = tmp_path / "again"
    write_crawl(again, SMALL, progress=False)
    for shard in sorted(out.glob("*.tar")):
        assert (again / shard.name).read_bytes() == shard.read_bytes()
    first = sorted(again.glob("*.tar"))[0]
    kept = sorted(again.glob("*.tar"))[1].stat().st_mtime_ns
    first.unlink()
    write_crawl(again, SMALL, progress=False)  # resume: writes the missing shard, keeps the others
    assert first.read_bytes() == (out / first.name).read_bytes()
    assert sorted(again.glob("*.tar"))[1].stat().st_mtime_ns == kept
    assert read_ground_truth(again) == truth


def test_cluster_scoring(crawl, tmp_path):
    out, truth = crawl
    pages = {}
    for r in truth["records"].values():
        if r["kind"] == "subject" and r["page_kind"] == "shop":
            pages.setdefault(r["page_url"], []).append(r["url"])
    perfect = score_cluster_assignments(pages, truth)
    assert perfect["purity"] == 1.0 and perfect["pure_cluster_fraction"] == 1.0 and perfect["recall"] == 1.0
    # mixing two pages halves purity; dropping clusters lowers recall
    urls = list(pages.values())
    mixed = score_cluster_assignments({"a": urls[0][:3] + urls[1][:3]}, truth)
    assert mixed["purity"] == pytest.approx(0.5) and mixed["recall"] < 1.0
    # builder shards: {key}.json with cluster_id and source_urls
    shard = tmp_path / "icl-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for n, (page, members) in enumerate(pages.items()):
            meta = json.dumps({"cluster_id": f"c{n}", "k": 3, "source_urls": members}).encode()
            info = tarfile.TarInfo(f"c{n}_0000.json")
            info.size = len(meta)
            tar.addfile(info, io.BytesIO(meta))
    assert read_builder_clusters([shard]) == {f"c{n}": m for n, m in enumerate(pages.values())}
    scored = score_clusters([shard], out)
    assert scored["purity"] == 1.0 and scored["recall"] == 1.0 and scored["unknown_urls"] == 0


def test_subject_of_urls(crawl):
    from suti.demo.crawl import subject_of_urls

    _, truth = crawl
    rec = next(r for r in truth["records"].values() if r["kind"] == "subject")
    assert subject_of_urls(truth, [rec["url"], "https://elsewhere.example/x.jpg"]).id == rec["subject"]
    assert subject_of_urls(truth, ["https://elsewhere.example/x.jpg"]) is None
