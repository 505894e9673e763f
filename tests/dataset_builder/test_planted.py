"""End to end on a planted corpus: the right clusters survive, junk pages and boilerplate images do not."""
import io
import json

import pytest
from PIL import Image

from dataset_builder import build_dataset, config_from_dict, normalize_page_url, read_icl_shard
from dataset_builder.config import ConfigError

from db_helpers import planted_config


@pytest.fixture(scope="module")
def built(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("planted_out")
    cfg = config_from_dict(planted_config(planted["shards"], out))
    stats = build_dataset(cfg)
    samples = [s for p in sorted(out.glob("icl-*.tar")) for s in read_icl_shard(p)]
    return {"out": out, "stats": stats, "samples": samples, "cfg": cfg}


def test_the_planted_clusters_survive_and_nothing_else(planted, built):
    expected = planted["expected"]
    pages = {s["json"]["page_key"] for s in built["samples"]}
    assert pages == set(expected["kept_pages"])
    for page in expected["dropped_pages"]:
        assert normalize_page_url(page) not in pages
    c = built["stats"]["counts"]
    assert c["group"]["clusters_dropped"]["too_small"] == 3          # the small blog posts + the bad gallery
    assert c["coherence"]["clusters_dropped"]["incoherent"] == 3     # the news pages
    assert c["write"]["clusters"] == len(expected["kept_pages"])


def test_boilerplate_and_outliers_and_duplicates_are_counted(planted, built):
    c = built["stats"]["counts"]
    n_pages_with_logo = len(expected_logo_pages(planted))
    assert c["boilerplate"]["images_found"] == 1
    assert c["group"]["dropped"]["boilerplate"] == n_pages_with_logo
    assert c["coherence"]["dropped"]["off_centroid"] == 6             # one ad per kept shop page
    assert c["coherence"]["dropped"]["cluster_incoherent"] == 3 * 6   # every image of the three news pages
    assert sum(c["coherence"]["dropped"].values()) == c["coherence"]["in"] - c["coherence"]["out"]
    assert c["dedupe"]["dropped"]["near_duplicate_in_cluster"] == 6  # the resized copy on each shop page
    assert c["dedupe"]["dropped"]["near_duplicate_across_corpus"] == 1  # the reseller's reused photo
    for s in built["samples"]:
        assert "static/logo.png" not in " ".join(s["json"]["source_urls"])
        assert "/ads/" not in " ".join(s["json"]["source_urls"])


def expected_logo_pages(planted):
    return {normalize_page_url(r["page_url"]) for r in planted["rows"] if r["image_url"].endswith("logo.png")}


def test_bad_inputs_are_counted_with_reasons(built):
    dropped = built["stats"]["counts"]["decode"]["dropped"]
    assert dropped == {"bad_aspect": 1, "corrupt": 1, "empty": 1, "not_an_image": 2, "too_many_pixels": 1,
                       "too_small": 1, "truncated": 1}


def test_samples_follow_the_icl_layout(built):
    k = built["cfg"].k
    assert built["samples"]
    for s in built["samples"]:
        meta = s["json"]
        assert s["__key__"] == f"{meta['cluster_id']}_{s['__key__'].rsplit('_', 1)[1]}"
        assert set(meta) >= {"cluster_id", "k", "page_url", "source_urls", "skill", "expert", "scores"}
        assert meta["k"] == k and meta["expert"] == "fake"
        assert meta["scores"]["clip_t"] >= 0.2 and meta["scores"]["clip_i"] >= 0.7
        for i in range(k):
            Image.open(io.BytesIO(s[f"ex{i}.jpg"])).verify()
            assert isinstance(s[f"ex{i}.txt"], str)
        assert Image.open(io.BytesIO(s["target.jpg"])).size == (96, 96)
        assert meta["subject"].split()[-1] in s["target.txt"]
    keep = built["stats"]["rates"]["target_keep_rate"]
    assert 0 < keep < 1  # the fake expert's bad renders were filtered out


def test_webdataset_library_reads_the_shards(built):
    wds = pytest.importorskip("webdataset")
    shards = [str(p) for p in sorted(built["out"].glob("icl-*.tar"))]
    got = list(wds.WebDataset(shards, shardshuffle=False))
    assert len(got) == len(built["samples"])
    assert {"target.jpg", "target.txt", "ex0.jpg", "ex2.txt", "json"} <= set(got[0])


def test_manifest_stats_and_contact_sheet(built):
    out = built["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == len(built["samples"])
    assert [s["shard"] for s in manifest["shards"]] == sorted(p.name for p in out.glob("icl-*.tar"))
    html = (out / "contact_sheet.html").read_text()
    for s in built["samples"][:3]:
        assert s["json"]["cluster_id"] in html
    assert "data:image/jpeg;base64," in html and "Rejected clusters" in html and "incoherent" in html
    assert json.loads((out / "stats.json").read_text()) == built["stats"]
    assert not (out / "work" / "ingest" / "00000").exists()  # intermediates removed after success


def test_rerun_of_a_finished_build_is_a_no_op_and_a_changed_config_is_refused(planted, built):
    before = {p.name: p.stat().st_mtime_ns for p in built["out"].glob("icl-*.tar")}
    assert build_dataset(built["cfg"]) == built["stats"]
    assert {p.name: p.stat().st_mtime_ns for p in built["out"].glob("icl-*.tar")} == before
    changed = config_from_dict(planted_config(planted["shards"], built["out"], k=2))
    with pytest.raises(ConfigError, match="different config"):
        build_dataset(changed)


def test_held_out_expert_and_memory_bound_settings_give_the_same_clusters(planted, tmp_path):
    """One partition or many: grouping is global either way."""
    cfg = planted_config(planted["shards"], tmp_path / "one", records_per_partition=10_000,
                         expert={"type": "held_out", "factory": None})
    stats = build_dataset(config_from_dict(cfg))
    assert stats["partitions"] == 1
    samples = [s for p in sorted((tmp_path / "one").glob("icl-*.tar")) for s in read_icl_shard(p)]
    assert {s["json"]["page_key"] for s in samples} == set(planted["expected"]["kept_pages"])
    assert all(s["json"]["skill"] == "held_out" for s in samples)
    assert all(s["json"]["source_urls"][-1] not in s["json"]["source_urls"][:-1] for s in samples)
    # subject 0's views were CMYK, 16-bit greyscale, palette and EXIF-rotated files: all six stay in its cluster
    zorb = {u for s in samples if s["json"]["page_key"] == planted["expected"]["kept_pages"][0]
            for u in s["json"]["source_urls"]}
    assert zorb == {f"https://cdn.example.org/zorb/{v}.jpg" for v in range(6)}
