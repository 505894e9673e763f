"""The subject world: determinism, resolution independence, prompts, held-out split and benchmark API."""
from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from suti.demo.heldout import (NUM_HELDOUT, heldout_subject, heldout_subjects, is_heldout, read_benchmark_subject,
                               render_expert_target, training_example, training_subject, write_benchmark)
from suti.demo.world import (Context, Subject, parse_prompt, prompt_for, random_context, random_subject,
                             render, render_prompt)


def _pair(seed):
    rng = random.Random(seed)
    return random_subject(rng), random_context(rng, p_specified=0.8)


def test_same_seed_same_bytes_and_seed_matters():
    for seed in range(6):
        s, c = _pair(seed)
        a = render(s, c, size=48, seed=seed, jitter=0.05).tobytes()
        assert a == render(s, c, size=48, seed=seed, jitter=0.05).tobytes()
    s = Subject("toy", "round", 0, "red", "blue", "yellow", "dots")
    a = render(s, Context(scene="space"), size=48, seed=1).tobytes()
    assert a != render(s, Context(scene="space"), size=48, seed=2).tobytes()  # the stars move


@pytest.mark.parametrize("size", [32, 64])
def test_any_resolution_is_the_same_picture(size):
    for seed in range(4):
        s, c = _pair(100 + seed)
        small = np.asarray(render(s, c, size=size, seed=seed), np.float32)
        big = render(s, c, size=256, seed=seed).resize((size, size), Image.BOX)
        other = np.asarray(render(*_pair(200 + seed), size=size, seed=seed), np.float32)
        diff = np.abs(small - np.asarray(big, np.float32)).mean()
        assert diff < 6.0, diff  # a few grey levels: only the supersampling differs
        assert np.abs(small - other).mean() > 4 * diff  # a different picture is far away


@pytest.mark.parametrize("style,bound", [("watercolour", 4.0), ("sketch", 9.0)])
def test_styles_are_the_same_picture_at_any_resolution(style, bound):
    # pencil lines are found in the drawing at its own resolution, so a sketch differs a little more
    s = Subject("toy", "round", 1, "red", "blue", "yellow", "stripes")
    c = Context(style=style, scene="beach")
    small = np.asarray(render(s, c, size=32, seed=1), np.float32)
    big = np.asarray(render(s, c, size=512, seed=1).resize((32, 32), Image.BOX), np.float32)
    photo = np.asarray(render(s, Context(scene="beach"), size=32, seed=1), np.float32)
    assert np.abs(small - big).mean() < bound
    assert np.abs(small - photo).mean() > 2 * bound


def test_prompt_round_trip_and_builder_wording():
    rng = random.Random(0)
    for _ in range(300):
        s, c = random_subject(rng), random_context(rng, p_specified=0.7)
        assert parse_prompt(prompt_for(s.noun, c)) == c, prompt_for(s.noun, c)
    assert parse_prompt("a zorb toy on a sandy beach").scene == "beach"
    assert parse_prompt("a pencil sketch of a zorb creature") == Context(style="sketch")
    assert parse_prompt("a zorb mug wearing a red hat") == Context(accessory="hat")  # red belongs to the hat
    assert parse_prompt("a zorb mug, but blue") == Context(colour="blue")
    assert parse_prompt("a side view of the mug").view == "side"
    assert parse_prompt("a toy in a cozy living room") == Context()  # unknown words stay unspecified


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="Subject.cls"):
        Subject("teapot", "round", 0, "red", "blue", "yellow", "dots")
    with pytest.raises(ValueError, match="Context.scene"):
        Context(scene="moon")
    with pytest.raises(ValueError, match="size"):
        render(Subject("toy", "round", 0, "red", "blue", "yellow", "dots"), size=4)
    with pytest.raises(ValueError, match="subject id"):
        Subject.from_id("not-an-id")


def test_subject_id_round_trip():
    s = Subject("creature", "pear", 2, "green", "pink", "brown", "checks")
    assert Subject.from_id(s.id) == s and Subject.from_dict(s.to_dict()) == s


def test_heldout_split():
    subjects = heldout_subjects()
    assert len(subjects) == NUM_HELDOUT == len({s.identity_key for s in subjects})
    assert {s.cls for s in subjects} == {"toy", "mug", "creature"}
    rng = random.Random(7)
    assert not any(is_heldout(training_subject(rng)) for _ in range(2000))
    # a recoloured held-out subject is still held out
    h = subjects[0]
    other = next(c for c in ("red", "blue", "green") if c not in (h.primary, h.secondary, h.accent))
    assert is_heldout(Subject(h.cls, h.body, h.parts, other, h.secondary, h.accent, h.pattern))


def test_heldout_subject_api():
    skills = {}
    for i in (0, 1, 2):
        hs = heldout_subject(i)
        assert 3 <= len(hs.exemplar_texts) <= 5 and len(hs.exemplar_images(32)) == len(hs.exemplar_texts)
        assert hs.exemplar_texts[0] in ("a photo of a toy", "a photo of a mug", "a photo of a creature")
        assert len(hs.prompts) == 25 and len(hs.target_images(32)) == 25
        assert all(im.size == (32, 32) for im in hs.target_images(32))
        for p in hs.prompts:
            skills[p.skill] = skills.get(p.skill, 0) + 1
            assert p.labels and parse_prompt(p.prompt) == p.context
            assert hs.subject.noun in p.prompt
    assert set(skills) == {"recontextualization", "property_change", "accessorization", "stylization", "new_view"}
    with pytest.raises(IndexError):
        heldout_subject(NUM_HELDOUT)


def test_write_benchmark_folder(tmp_path, monkeypatch):
    import suti.demo.heldout as heldout

    monkeypatch.setattr(heldout, "NUM_HELDOUT", 2)
    out = write_benchmark(tmp_path / "bench", size=32)
    sub = read_benchmark_subject(next(out.glob("00_*")))
    hs = heldout_subject(0)
    assert len(sub["prompts"]) == 25 and sub["prompts"] == [p.prompt for p in hs.prompts]
    assert len(sub["exemplar_images"]) == len(hs.exemplar_texts)
    assert np.array_equal(np.asarray(sub["target_images"][3]), np.asarray(hs.target_images(32)[3]))
    assert (out / "benchmark.json").is_file()


def test_training_examples_and_expert():
    ex = training_example(3, size=32, k=3)
    assert len(ex.exemplar_images) == 3 and len(ex.exemplar_texts) == 3 and not is_heldout(ex.subject)
    assert ex.target_image.size == (32, 32) and parse_prompt(ex.target_prompt) == ex.target_context
    again = training_example(3, size=32, k=3)
    assert again.target_image.tobytes() == ex.target_image.tobytes() and again.target_prompt == ex.target_prompt
    s = ex.subject
    got = render_expert_target(s, "a zorb thing in outer space, but pink", size=32, seed=5)
    assert got.tobytes() == render(s, Context(scene="space", colour="pink"), size=32, seed=5).tobytes()
    assert got.tobytes() == render_prompt(s, "a pink zorb in outer space", size=32, seed=5).tobytes()


def test_core_imports_do_not_import_the_world():
    code = ("import sys, suti, suti.pipeline, suti.training, retrieval, dataset_builder; "
            "bad = [m for m in sys.modules if m.startswith('suti.demo')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
