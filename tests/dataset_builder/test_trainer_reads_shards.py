"""Every sample the builder writes is one the SuTI trainer accepts: suti.training.data.BatchStream reads ALL the
written shards (in-context task) and skips nothing, also when pages lack alt text (common on the web)."""
import json

import pytest

from db_helpers import planted_config

from dataset_builder import build_dataset, config_from_dict, read_icl_shard
from dataset_builder.testing import make_planted_records, write_img2dataset_shards

data = pytest.importorskip("suti.training.data")


def read_all_with_the_trainer(out) -> dict:
    """One batch holding the whole epoch (raw records, so a skipped one would show in `skipped`)."""
    manifest = json.loads((out / "manifest.json").read_text())
    shards = [str(out / s["shard"]) for s in manifest["shards"]]
    stream = data.BatchStream(shards, "in_context", 32, manifest["samples"], shuffle=False)
    batch = next(iter(stream))
    return {"batch": batch, "samples": manifest["samples"], "k": manifest["k"]}


def assert_nothing_skipped(got):
    b = got["batch"]
    assert got["samples"] > 0
    assert b["skipped"] == []
    assert len(b["keys"]) == got["samples"] and b["position"] == {"epoch": 0, "index": got["samples"]}
    assert tuple(b["exemplar_images"].shape[:2]) == (got["samples"], got["k"]) and bool(b["exemplar_mask"].all())
    assert all(c.strip() for c in b["captions"]) and all(c.strip() for caps in b["exemplar_captions"] for c in caps)


def test_the_trainer_reads_every_sample_of_the_planted_build(planted, tmp_path):
    out = tmp_path / "out"
    build_dataset(config_from_dict(planted_config(planted["shards"], out)))
    assert_nothing_skipped(read_all_with_the_trainer(out))


@pytest.fixture(scope="module")
def no_alt_corpus(tmp_path_factory):
    """Subject 2's page has no alt text at all; subject 1's page lacks it on two of its six views."""
    root = tmp_path_factory.mktemp("noalt")
    rows, expected = make_planted_records(n_subjects=3, n_junk=0, n_small=0)
    for r in rows:
        if "shop2." in r["page_url"].lower() or r["image_url"].endswith(("quix/0.jpg", "quix/1.jpg")):
            r["text"] = ""
    return {"shards": write_img2dataset_shards(rows, root / "shards", n_shards=2), "expected": expected}


@pytest.mark.parametrize("expert", ["fake", "held_out"])
def test_pages_without_alt_text_give_samples_the_trainer_accepts(no_alt_corpus, tmp_path, expert):
    out = tmp_path / expert
    over = {} if expert == "fake" else {"expert": {"type": "held_out", "factory": None}}
    stats = build_dataset(config_from_dict(planted_config(no_alt_corpus["shards"], out, **over)))
    assert_nothing_skipped(read_all_with_the_trainer(out))
    samples = [s for p in sorted(out.glob("icl-*.tar")) for s in read_icl_shard(p)]
    by_page = {}
    for s in samples:
        by_page.setdefault(s["json"]["page_key"], []).append(s)
    # the page without any alt text survives, named after its URL ("/item/blent")
    blent = by_page["https://shop2.example.com/item/blent"]
    assert {s["json"]["subject"] for s in blent} == {"a blent"}
    assert all(s[f"ex{i}.txt"] == "a blent" for s in blent for i in range(3))
    assert stats["counts"]["prompts"]["subject_from_url"] == 1
    # the page with a few empty alt texts shows captioned exemplars only
    quix = by_page["https://shop1.example.com/item/quix"]
    assert all("quix backpack" in s[f"ex{i}.txt"] for s in quix for i in range(3))
    assert {s["json"]["subject"] for s in quix} == {"a quix backpack"}
    assert stats["counts"]["captions"]["empty_alt"] >= 8 and stats["counts"]["captions"]["from_subject"] >= 8
    assert all(s["target.txt"].strip() for s in samples)
