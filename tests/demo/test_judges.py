"""The shipped world judge clears its bars on held-out renders it never saw (fresh seed, 32 and 64 px)."""
from __future__ import annotations

import pytest
import torch

from suti.demo.heldout import heldout_subject
from suti.demo.judge_weights import load_world_judge, save_world_judge
from suti.demo.judges import WorldJudge, attribute_accuracy, identity_scores, to_tensor
from suti.demo.train_judges import ATTRIBUTE_BAR, IDENTITY_BAR, validate_judge


@pytest.fixture(scope="module")
def judge():
    return load_world_judge()


@pytest.mark.parametrize("size", [32, 64])
def test_shipped_judge_clears_the_bar_on_fresh_heldout_renders(judge, size):
    m = validate_judge(judge, seed=777 + size, size=size, per_subject=10)  # 300 fresh queries
    assert m["identity_top1"] >= IDENTITY_BAR, m
    assert m["attributes_all"]["overall"] >= ATTRIBUTE_BAR, m
    assert m["attributes_specified"]["overall"] >= ATTRIBUTE_BAR, m
    assert m["benchmark_identity_top1"] >= IDENTITY_BAR, m
    assert m["benchmark_attributes"]["overall"] >= ATTRIBUTE_BAR, m


def test_identity_score_separates_subjects(judge):
    a, b = heldout_subject(0), heldout_subject(1)
    same = identity_scores(judge, a.target_images(32)[:10], a.exemplar_images(32)).mean()
    other = identity_scores(judge, b.target_images(32)[:10], a.exemplar_images(32)).mean()
    assert same > other + 0.2, (same, other)


def test_attribute_accuracy_scores_only_what_is_specified(judge):
    hs = heldout_subject(2)
    images = hs.target_images(32)[:4]
    acc = attribute_accuracy(judge, images, [{"scene": p.context.scene} for p in hs.prompts[:4]])
    assert set(acc) == {"scene", "overall"}
    with pytest.raises(KeyError, match="mood"):
        attribute_accuracy(judge, images[:1], [{"mood": "happy"}])


def test_save_load_round_trip_and_errors(judge, tmp_path):
    save_world_judge(judge, tmp_path / "j")
    again = load_world_judge(tmp_path / "j")
    x = to_tensor(heldout_subject(0).exemplar_images(64))
    assert torch.equal(again.identity_embedding(x), judge.identity_embedding(x))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_world_judge(tmp_path)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        WorldJudge()(torch.zeros(3, 32, 32))
