"""The shipped world CLIP loads through retrieval.Embedder and reads the world's captions."""
from __future__ import annotations

import random

import numpy as np
import pytest

from retrieval import Embedder
from suti.demo.heldout import heldout_subjects
from suti.demo.world import SCENES, STYLES, Context, prompt_for, render
from suti.demo.world_clip import SHIPPED_WORLD_CLIP, read_crawl_pairs


@pytest.fixture(scope="module")
def clip():
    return Embedder.from_pretrained(f"local-dir:{SHIPPED_WORLD_CLIP}")


def _top1(clip, attribute, values, seed):
    rng = random.Random(seed)
    hits, total = 0, 0
    for subject in heldout_subjects():  # never in the crawl it trained on
        j = rng.randrange(len(values))
        image = render(subject, Context(**{attribute: values[j]}), size=32, seed=rng.randrange(2**31), jitter=0.05)
        texts = clip.embed_texts([prompt_for(subject.noun, Context(**{attribute: v})) for v in values])
        hits += int(np.argmax(clip.embed_images([image]) @ texts.T) == j)
        total += 1
    return hits / total


def test_clip_folder_loads_and_ranks_the_right_scene(clip):
    assert clip.dim == 64
    scenes = list(SCENES)
    accuracy = _top1(clip, "scene", scenes, seed=4242)
    assert accuracy >= 1 / len(scenes) + 0.35, accuracy


def test_clip_ranks_the_right_style(clip):
    styles = list(STYLES)
    accuracy = _top1(clip, "style", styles, seed=99)
    assert accuracy >= 1 / len(styles) + 0.3, accuracy


def test_read_crawl_pairs_counts_what_it_skips(tmp_path):
    from suti.demo.crawl import CrawlConfig, write_crawl

    write_crawl(tmp_path, CrawlConfig(shop_pages=4, junk_pages=1, broken_prob=0.3, image_sizes=(48,), seed=1),
                progress=False)
    images, captions, skipped = read_crawl_pairs(tmp_path)
    assert len(images) == len(captions) > 0 and all(c.strip() for c in captions)
    assert skipped["unreadable_image"] > 0
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        read_crawl_pairs(tmp_path / "nothing")
