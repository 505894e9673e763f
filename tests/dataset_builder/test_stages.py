import sys
import types

import numpy as np
import pytest

from dataset_builder.captions import TransformersCaptioner, caption_clusters, fill_missing_captions, load_captioner
from dataset_builder.coherence import coherence_filter
from dataset_builder.config import CaptionConfig, CoherenceConfig, ExpertConfig
from dataset_builder.counts import Counts
from dataset_builder.dedupe import (assign_cells, cross_corpus_removals, dedupe_within, range_pairs, train_cells)
from dataset_builder.embedding import embed_clusters
from dataset_builder.experts import DreamBoothExpert, Expert, HeldOutExpert, filter_targets
from dataset_builder.grouping import boilerplate_hashes, group_pages
from dataset_builder.prompts import (SKILL_TEMPLATES, TemplatePromptGenerator, TextGenerationPromptGenerator,
                                     cluster_subject, subject_phrase, url_subject, with_article)
from dataset_builder.records import Cluster, ICLSample, Member, Prompt, Record, Target, hash64
from dataset_builder.samples import build_samples, choose_exemplars
from dataset_builder.testing import FakeExpert, PlantedEmbedder, jpeg_bytes, random_image, subject_image
from dataset_builder.writer import read_icl_shard, write_icl_shard


def rec(key, page, image: bytes, content=None, text="", size=(96, 96)):
    return Record(key=key, source="t", page_url=page, page_key=page, page_hash=hash64(page), image_url=key,
                  text=text, image=image, width=size[0], height=size[1],
                  content_hash=content if content is not None else hash64(image))


def cluster_of(word, n, page=None, extra=()):
    page = page or f"https://e.com/{word}"
    members = [Member(rec(f"{word}{v}", page, jpeg_bytes(subject_image(word, v)), text=f"{word} teapot {v}"))
               for v in range(n)] + [Member(r) for r in extra]
    return Cluster(page_hash=hash64(page), page_key=page, members=members)


def test_boilerplate_counts_distinct_pages_not_occurrences():
    pairs = np.array([[1, 10], [1, 11], [1, 12], [2, 10], [2, 10], [2, 10], [3, 20]], dtype=np.uint64)
    assert boilerplate_hashes(pairs, 3).tolist() == [1]
    assert boilerplate_hashes(pairs, 1).tolist() == [1, 2, 3]


def test_group_pages_bounds_and_duplicates():
    img = jpeg_bytes(subject_image("quix", 0))
    recs = [rec(f"a{i}", "https://e.com/a", jpeg_bytes(subject_image("quix", i))) for i in range(4)]
    recs.append(rec("a-copy", "https://e.com/a", img))  # same pixels as a0 on the same page
    recs += [rec(f"b{i}", "https://e.com/b", jpeg_bytes(subject_image("frap", i))) for i in range(2)]
    recs += [rec(f"c{i}", "https://e.com/c", jpeg_bytes(subject_image("mivo", i))) for i in range(9)]
    recs.append(rec("logo", "https://e.com/a", b"logo", content=77))
    counts = Counts()
    clusters = group_pages(recs, np.array([77], dtype=np.uint64), min_size=4, max_size=8, counts=counts)
    assert [c.page_key for c in clusters] == ["https://e.com/a"]
    assert len(clusters[0].members) == 4
    assert counts["group.dropped.boilerplate"] == 1 and counts["group.dropped.duplicate_in_page"] == 1
    assert counts["group.clusters_dropped.too_small"] == 1 and counts["group.clusters_dropped.too_large"] == 1


def test_coherence_drops_outliers_and_incoherent_clusters():
    emb = PlantedEmbedder()
    good = cluster_of("zorb", 5, extra=[rec("ad", "https://e.com/zorb", jpeg_bytes(random_image("ad")))])
    junk_page = "https://e.com/junk"
    junk = Cluster(hash64(junk_page), junk_page,
                   [Member(rec(f"j{i}", junk_page, jpeg_bytes(random_image(f"j{i}")))) for i in range(6)])
    counts, rejected = Counts(), []
    clusters = embed_clusters([good, junk], emb, 4, counts)
    kept = coherence_filter(clusters, CoherenceConfig(), 4, counts, rejected)
    assert [c.page_key for c in kept] == ["https://e.com/zorb"]
    assert "ad" not in [m.record.key for m in kept[0].members] and len(kept[0].members) == 5
    assert kept[0].mean_similarity > 0.7
    assert [r for _, r in rejected] == ["incoherent"]
    # each record counted once: the ad as an outlier of a kept cluster, the junk page's images with their cluster
    assert counts["coherence.dropped.off_centroid"] == 1
    assert counts["coherence.dropped.cluster_incoherent"] == 6
    assert counts["coherence.in"] - counts["coherence.out"] == 1 + 6


def test_image_text_filter_drops_mismatched_alt_text():
    emb = PlantedEmbedder()
    c = cluster_of("zorb", 5)
    c.members[0].record.text = "a photo of a frap"  # names another planted subject
    c.members[1].record.text = ""  # no alt text: kept
    embed_clusters([c], emb, 8, Counts(), with_text=True)
    counts = Counts()
    kept = coherence_filter([c], CoherenceConfig(min_image_text_score=0.5), 4, counts)
    assert counts["coherence.dropped.image_text_mismatch"] == 1
    assert "zorb0" not in [m.record.key for m in kept[0].members]


def test_range_pairs_is_exact():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    x[10] = x[3] + 0.01
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows, cols = range_pairs(x, 0.95)
    s = x @ x.T
    want = {(i, j) for i in range(50) for j in range(50) if i != j and s[i, j] >= 0.95}
    assert set(zip(rows.tolist(), cols.tolist())) == want and (3, 10) in want


def test_dedupe_within_keeps_the_first_copy():
    c = cluster_of("zorb", 4)
    copy = Member(rec("zorb0-small", c.page_key, jpeg_bytes(subject_image("zorb", 0).resize((90, 90)), 70)))
    c.members.append(copy)
    embed_clusters([c], PlantedEmbedder(), 8, Counts())
    counts = Counts()
    out = dedupe_within([c], 0.95, 4, counts)
    assert [m.record.key for m in out[0].members] == ["zorb0", "zorb1", "zorb2", "zorb3"]
    assert counts["dedupe.dropped.near_duplicate_in_cluster"] == 1


def test_cross_corpus_cells_find_the_same_pairs_as_one_exact_search():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(400, 32)).astype(np.float32)
    x = np.concatenate([base, base[:60] + 0.02 * rng.normal(size=(60, 32)).astype(np.float32)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cluster_hash = np.arange(len(x), dtype=np.uint64)  # every item its own cluster
    exact = set(cross_corpus_removals(x, cluster_hash, 0.95).tolist())
    assert len(exact) == 60
    cent = train_cells(x[::3], 8)
    rows, cells = assign_cells(x, cent, margin=0.05)
    found = set()
    for c in range(len(cent)):
        r = rows[cells == c]
        found |= set(r[cross_corpus_removals(x[r], cluster_hash[r], 0.95)].tolist())
    assert found == exact


def test_captions_alt_auto_and_recaption():
    c = cluster_of("zorb", 4)
    c.members[0].record.text = "zorb"  # too short for auto mode
    seen = []

    def fake_captioner(images):
        seen.append(len(images))
        return [f"generated {im.size[0]}" for im in images]

    counts = Counts()
    caption_clusters([c], fake_captioner, CaptionConfig(mode="auto", min_alt_words=2, batch_size=8), counts)
    assert c.members[0].caption == "generated 96" and c.members[1].caption == "zorb teapot 1"
    assert counts["captions.recaptioned"] == 1 and counts["captions.alt"] == 3
    caption_clusters([c], fake_captioner, CaptionConfig(mode="recaption", batch_size=3), Counts())
    assert all(m.caption.startswith("generated") for m in c.members) and seen[-2:] == [3, 1]
    with pytest.raises(ValueError, match="returned"):
        caption_clusters([c], lambda ims: [], CaptionConfig(mode="recaption"), Counts())


def test_subject_phrase():
    caps = ["Red zorb teapot on a table", "zorb teapot, side view", "the zorb teapot in its box", "photo"]
    assert subject_phrase(caps) == "zorb teapot"
    assert subject_phrase(["", "  "]) == ""
    assert with_article("apple pie") == "an apple pie" and with_article("") == "the subject"


def test_template_prompts_cover_skills_and_are_reproducible():
    gen = TemplatePromptGenerator(seed=3)
    a, b = gen("c1", "a zorb teapot", 10), gen("c1", "a zorb teapot", 10)
    assert [p.text for p in a] == [p.text for p in b]
    assert {p.skill for p in a} == set(SKILL_TEMPLATES)
    assert all("a zorb teapot" in p.text for p in a) and len({p.text for p in a}) == 10
    assert [p.text for p in gen("c2", "a zorb teapot", 10)] != [p.text for p in a]
    with pytest.raises(ValueError, match="unknown skill"):
        TemplatePromptGenerator(["dancing"])


def test_text_generation_prompts_with_fallback():
    def fn(subject, skill, n):
        return ["Here: no subject at all"] if skill == "stylization" else [f"{subject} riding a bike"]
    gen = TextGenerationPromptGenerator(fn=fn, skills=["recontextualization", "stylization"])
    prompts = gen("c", "a zorb teapot", 2)
    assert prompts[0].text == "a zorb teapot riding a bike" and prompts[0].template == "{subject} riding a bike"
    assert prompts[1].skill == "stylization" and prompts[1].template in SKILL_TEMPLATES["stylization"]
    assert gen.last_fallbacks == 1


def _filtered_cluster():
    c = cluster_of("zorb", 6)
    embed_clusters([c], PlantedEmbedder(), 8, Counts())
    for m in c.members:
        m.caption = m.record.text
    return c


def test_held_out_expert_implements_the_interface():
    c = _filtered_cluster()
    expert = HeldOutExpert()
    assert isinstance(expert, Expert)
    targets = expert.render(c, [0, 1, 2], [])
    assert [t.source_url for t in targets] == ["zorb3", "zorb4", "zorb5"]
    assert targets[0].prompt == "zorb teapot 3" and targets[0].expert == "held_out"
    counts = Counts()
    kept = filter_targets(targets, np.stack([c.members[i].embedding for i in (0, 1, 2)]), PlantedEmbedder(),
                          ExpertConfig(), 8, counts)
    assert len(kept) == 3 and counts["expert.kept"] == 3


def test_fake_expert_targets_are_filtered_by_clip_t_and_clip_i():
    c = _filtered_cluster()
    prompts = TemplatePromptGenerator()("c", "a zorb teapot", 6)
    expert = FakeExpert(bad_every=3)
    assert isinstance(expert, Expert)
    targets = expert.render(c, [0, 1, 2], prompts)
    counts = Counts()
    kept = filter_targets(targets, np.stack([c.members[i].embedding for i in (0, 1, 2)]), PlantedEmbedder(),
                          ExpertConfig(min_clip_t=0.5, min_clip_i=0.7), 8, counts)
    assert len(kept) == 4 and counts["expert.dropped.clip_t_low"] == 2
    assert all(t.clip_t > 0.5 and t.clip_i > 0.7 for t in kept)
    assert [t.reject_reason for t in targets if not t.kept] == ["clip_t_low", "clip_t_low"]


def test_dreambooth_expert_calls_the_personalize_contract(monkeypatch):
    calls = {}

    class FakeTuned:
        def __call__(self, prompt, num_images, steps, guidance, seed, **kw):
            calls.setdefault("prompts", []).append((prompt, num_images, steps, guidance, kw))
            return [subject_image("zorb", 100 + seed % 7)] * num_images

    class Result:
        instance_prompt = "a sks teapot"
        pipe = FakeTuned()

    def dreambooth(pipe, images, class_noun, config, progress=True):
        calls["train"] = (pipe, len(images), class_noun, config)
        return Result()

    class DreamBoothConfig:
        def __init__(self, **kw):
            self.kw = kw

    fake = types.ModuleType("suti.personalize")
    fake.dreambooth, fake.DreamBoothConfig = dreambooth, DreamBoothConfig
    monkeypatch.setitem(sys.modules, "suti.personalize", fake)
    c = _filtered_cluster()
    expert = DreamBoothExpert("base-pipe", dreambooth={"steps": 7}, num_images=2, steps=3,
                              sample_kwargs={"stop_at": 0})
    expert._pipeline = object()  # a loaded pipeline object is used as is
    prompts = [Prompt("{subject} on a beach", "recontextualization", "a zorb teapot"),
               Prompt("a watercolor painting of {subject}", "stylization", "a zorb teapot")]
    targets = expert.render(c, [0, 1, 2], prompts)
    assert calls["train"][1:3] == (6, "teapot") and calls["train"][3].kw == {"steps": 7}
    assert [p[0] for p in calls["prompts"]] == ["a sks teapot on a beach", "a watercolor painting of a sks teapot"]
    assert calls["prompts"][0][1:] == (2, 3, 5.0, {"stop_at": 0})
    assert len(targets) == 4 and targets[0].prompt == "a zorb teapot on a beach" and targets[0].expert == "dreambooth"


def test_icl_shard_round_trip_and_bytes_are_reproducible(tmp_path):
    s = ICLSample(key="00ab_0000", exemplar_images=[b"e0", b"e1", b"e2"], exemplar_texts=["t0", "t1", "t\u00e92"],
                  target_image=b"T", target_text="a zorb teapot on a beach",
                  meta={"cluster_id": "00ab", "k": 3, "scores": {"clip_t": 0.3, "clip_i": 0.8}})
    write_icl_shard([s], tmp_path / "a.tar")
    write_icl_shard([s], tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    (got,) = list(read_icl_shard(tmp_path / "a.tar"))
    assert got["__key__"] == "00ab_0000" and got["target.jpg"] == b"T" and got["ex2.txt"] == "t\u00e92"
    assert got["json"]["scores"]["clip_i"] == 0.8
    assert not list(tmp_path.glob(".*tmp*"))


def test_alt_mode_recaptions_only_empty_alt_text_when_a_captioner_is_configured():
    c = cluster_of("zorb", 4)
    c.members[1].record.text = ""
    counts = Counts()
    caption_clusters([c], lambda ims: ["a generated caption"] * len(ims), CaptionConfig(mode="alt"), counts)
    assert [m.caption for m in c.members] == ["zorb teapot 0", "a generated caption", "zorb teapot 2",
                                              "zorb teapot 3"]
    assert counts["captions.alt"] == 3 and counts["captions.recaptioned"] == 1
    assert load_captioner(CaptionConfig(mode="alt")) is None
    assert isinstance(load_captioner(CaptionConfig(mode="alt", model="some/blip")), TransformersCaptioner)


def test_empty_captions_get_the_subject_and_exemplars_prefer_captioned_members():
    c = cluster_of("zorb", 5)
    for i, m in enumerate(c.members):
        m.centroid_similarity = 0.9 - 0.1 * i  # members 0, 1, 2 are the most representative
    c.members[0].record.text = c.members[2].record.text = ""
    counts = Counts()
    caption_clusters([c], None, CaptionConfig(mode="alt"), counts)
    assert counts["captions.empty_alt"] == 2
    subject = cluster_subject([m.caption for m in c.members], c.page_key, counts)
    assert subject == "a zorb teapot"
    assert choose_exemplars(c, 3) == [1, 3, 4]  # captioned first, then by similarity
    fill_missing_captions(c, subject, counts)
    assert c.members[0].caption == c.members[2].caption == "a zorb teapot" and counts["captions.from_subject"] == 2
    assert choose_exemplars(c, 3) == [0, 1, 2]  # once filled, representativeness alone


def test_build_samples_refuses_an_exemplar_without_text():
    c = cluster_of("zorb", 4)
    for m in c.members:
        m.caption = m.record.text
    c.members[0].caption = " "
    t = Target(image=None, jpeg=b"x", prompt="p", skill="s", expert="e")
    with pytest.raises(ValueError, match="no caption"):
        build_samples(c, [0, 1, 2], [t], "a zorb")


def test_subject_from_the_page_url_when_no_caption_names_it():
    assert url_subject("https://shop.example.com/p/blue-teapot.html") == "blue teapot"
    assert url_subject("https://en.wikipedia.org/wiki/Teapot") == "teapot"
    assert url_subject("https://e.com/item/12345") == "" and url_subject("https://e.com/") == ""
    counts = Counts()
    assert cluster_subject(["", ""], "https://e.com/products/red-lamp", counts) == "a red lamp"
    assert counts["prompts.subject_from_url"] == 1
    assert cluster_subject([], "https://e.com/p/123", counts) == "the subject"


def test_targets_with_empty_prompts_are_dropped_and_counted():
    c = _filtered_cluster()
    targets = HeldOutExpert().render(c, [0, 1, 2], [])
    targets[0].prompt, targets[1].prompt = "", "  "
    counts = Counts()
    kept = filter_targets(targets, np.stack([c.members[i].embedding for i in (0, 1, 2)]), PlantedEmbedder(),
                          ExpertConfig(), 8, counts)
    assert [t.prompt for t in kept] == ["zorb teapot 5"]
    assert counts["expert.rendered"] == 3 and counts["expert.dropped.empty_prompt"] == 2
    assert targets[0].reject_reason == "empty_prompt" and targets[0].clip_t is None
