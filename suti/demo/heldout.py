"""The held-out benchmark (30 subjects in no crawl page) and unlimited in-context training examples.

Held-out subject i has 3-5 exemplar photos with short captions ("a photo of a toy") and 25 prompts in
DreamBench's mix (10 recontextualisation, 5 property change, 3 accessorisation, 4 stylisation, 3 new
view), each with its ground-truth render and attribute labels. A subject is held out by its identity
(everything but its primary colour, which a colour change alters), so no recoloured copy of a held-out
subject is ever a training subject.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from retrieval.atomic import atomic_path, atomic_write_json

from .world import (ATTRIBUTES, COLOUR_NAMES, Context, Subject, prompt_for, random_context, random_subject,
                    render, render_prompt)

NUM_HELDOUT = 30
HELDOUT_SEED = 2024
BENCHMARK_FILE = "benchmark.json"

# The 25 prompt contexts of every held-out subject (colour changes are filled per subject).
_RECONTEXT = [Context(scene=s) for s in ("beach", "snow", "jungle", "city", "wooden floor", "space")] + [
    Context(scene="space", position="left"), Context(scene="snow", position="right"),
    Context(scene="city", size="small"), Context(scene="jungle", size="big")]
_ACCESSORY = [Context(accessory=a) for a in ("hat", "sunglasses", "scarf")]
_STYLE = [Context(style="sketch"), Context(style="watercolour"), Context(style="sketch", scene="beach"),
          Context(style="watercolour", scene="snow")]
_VIEW = [Context(view="side"), Context(view="back"), Context(view="side", scene="city")]


def _distance(a: Subject, b: Subject) -> int:
    return sum(x != y for x, y in zip(a.identity_key, b.identity_key))


@lru_cache(maxsize=None)
def heldout_subjects() -> tuple[Subject, ...]:
    """The 30 held-out subjects: distinct shapes (class, body, parts, pattern) and pairwise different in
    at least 3 identity factors, classes balanced 10/10/10."""
    rng = random.Random(f"heldout:{HELDOUT_SEED}")
    chosen: list[Subject] = []
    per_class: dict[str, int] = {}
    while len(chosen) < NUM_HELDOUT:
        s = random_subject(rng)
        if per_class.get(s.cls, 0) >= NUM_HELDOUT // 3:
            continue
        shape = (s.cls, s.body, s.parts, s.pattern)
        if any(shape == (c.cls, c.body, c.parts, c.pattern) or _distance(s, c) < 3 for c in chosen):
            continue
        chosen.append(s)
        per_class[s.cls] = per_class.get(s.cls, 0) + 1
    return tuple(chosen)


@lru_cache(maxsize=None)
def _heldout_keys() -> frozenset:
    return frozenset(s.identity_key for s in heldout_subjects())


def is_heldout(subject: Subject) -> bool:
    return subject.identity_key in _heldout_keys()


def training_subject(rng: random.Random) -> Subject:
    """A random subject that is not held out (by identity: no recoloured held-out subject either)."""
    while True:
        s = random_subject(rng)
        if not is_heldout(s):
            return s


# ----------------------------------------------------------------------------- the benchmark
@dataclass
class BenchmarkPrompt:
    prompt: str
    skill: str
    context: Context  # what the prompt says (unspecified attributes are None)
    seed: int

    @property
    def labels(self) -> dict[str, str]:
        """The attributes the prompt specifies -> their values (what an attribute judge should see)."""
        return self.context.specified()


@dataclass
class HeldOutSubject:
    index: int
    subject: Subject
    exemplar_contexts: list[Context]
    exemplar_seeds: list[int]
    prompts: list[BenchmarkPrompt]

    @property
    def exemplar_texts(self) -> list[str]:
        return [f"a photo of {'an' if self.subject.noun[0] in 'aeiou' else 'a'} {self.subject.noun}"
                for _ in self.exemplar_contexts]

    def exemplar_images(self, size: int = 64) -> list[Image.Image]:
        return [render(self.subject, c, size=size, seed=s, jitter=0.03)
                for c, s in zip(self.exemplar_contexts, self.exemplar_seeds)]

    def target_images(self, size: int = 64) -> list[Image.Image]:
        """The ground-truth render of every prompt."""
        return [render(self.subject, p.context, size=size, seed=p.seed) for p in self.prompts]

    def target_labels(self) -> list[dict[str, str]]:
        """Every attribute of each ground-truth render (unspecified ones at their defaults)."""
        return [vars(p.context.resolved(self.subject)) for p in self.prompts]


def heldout_subject(i: int) -> HeldOutSubject:
    """Held-out subject i (0 <= i < 30): exemplars, prompts, and ground truth."""
    if not 0 <= i < NUM_HELDOUT:
        raise IndexError(f"held-out subject index must be in [0, {NUM_HELDOUT}), got {i}")
    subject = heldout_subjects()[i]
    rng = random.Random(f"heldout:{HELDOUT_SEED}:{i}")
    k = 3 + i % 3
    exemplar_contexts = [Context(scene=rng.choice(["plain", "plain", "wooden floor"]),
                                 position=rng.choice(["center", "left", "right"]),
                                 size=rng.choice(["medium", "big"]), view=rng.choice(["front", "front", "side"]))
                         for _ in range(k)]
    others = [c for c in COLOUR_NAMES if c not in (subject.primary, subject.secondary, subject.accent)]
    contexts = ([(c, "recontextualization") for c in _RECONTEXT]
                + [(Context(colour=c), "property_change") for c in others]
                + [(c, "accessorization") for c in _ACCESSORY]
                + [(c, "stylization") for c in _STYLE] + [(c, "new_view") for c in _VIEW])
    prompts = [BenchmarkPrompt(prompt_for(subject.noun, c), skill, c, seed=HELDOUT_SEED * 1000 + i * 100 + j)
               for j, (c, skill) in enumerate(contexts)]
    return HeldOutSubject(i, subject, exemplar_contexts, [rng.randrange(2**31) for _ in range(k)], prompts)


def write_benchmark(out_dir: str | os.PathLike, size: int = 256) -> Path:
    """Save the benchmark like a DreamBench folder: one folder per subject with exemplars 00.png ...,
    targets/NN.png, and prompts.json; benchmark.json lists subjects, classes and prompts."""
    out = Path(out_dir)
    index = {"size": size, "subjects": []}
    for i in range(NUM_HELDOUT):
        hs = heldout_subject(i)
        name = f"{i:02d}_{hs.subject.noun}"
        folder = out / name
        for j, image in enumerate(hs.exemplar_images(size)):
            _save_png(image, folder / f"{j:02d}.png")
        for j, image in enumerate(hs.target_images(size)):
            _save_png(image, folder / "targets" / f"{j:02d}.png")
        prompts = [{"prompt": p.prompt, "skill": p.skill, "labels": p.labels, "target": f"targets/{j:02d}.png",
                    "target_labels": lab} for j, (p, lab) in enumerate(zip(hs.prompts, hs.target_labels()))]
        atomic_write_json(folder / "prompts.json", {"subject": hs.subject.to_dict(), "subject_id": hs.subject.id,
                                                    "class": hs.subject.noun, "exemplar_texts": hs.exemplar_texts,
                                                    "prompts": prompts})
        index["subjects"].append({"folder": name, "class": hs.subject.noun, "subject_id": hs.subject.id})
    atomic_write_json(out / BENCHMARK_FILE, index)
    return out


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def read_benchmark_subject(folder: str | os.PathLike) -> dict:
    """A written subject folder -> {"exemplar_images", "exemplar_texts", "prompts", "target_images", "labels"}."""
    folder = Path(folder)
    path = folder / "prompts.json"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark subject folder {folder} has no prompts.json")
    meta = json.loads(path.read_text())
    exemplars = sorted(p for p in folder.glob("*.png"))
    return {"exemplar_images": [Image.open(p).convert("RGB") for p in exemplars],
            "exemplar_texts": meta["exemplar_texts"], "prompts": [p["prompt"] for p in meta["prompts"]],
            "target_images": [Image.open(folder / p["target"]).convert("RGB") for p in meta["prompts"]],
            "labels": [p["labels"] for p in meta["prompts"]]}


# ----------------------------------------------------------------------------- training examples
SKILLS = ("recontextualization", "property_change", "accessorization", "stylization", "new_view")


@dataclass
class ICLExample:
    exemplar_images: list[Image.Image]
    exemplar_texts: list[str]
    target_image: Image.Image
    target_prompt: str
    subject: Subject
    target_context: Context
    skill: str


def random_target_context(rng: random.Random, subject: Subject | None = None) -> tuple[Context, str]:
    """A new context in DreamBench's skill mix (one skill, sometimes with a scene or position). A colour
    change avoids `subject`'s own colour (any colour when the subject is not known)."""
    skill = rng.choice(SKILLS)
    base = random_context(rng, p_specified=0.3)
    ctx = Context(scene=base.scene, position=base.position, size=base.size)
    if skill == "recontextualization":
        ctx = Context(scene=rng.choice(ATTRIBUTES["scene"][1:]), position=base.position, size=base.size)
    elif skill == "property_change":
        colour = rng.choice([c for c in COLOUR_NAMES if subject is None or c != subject.primary])
        ctx = Context(scene=base.scene, colour=colour)
    elif skill == "accessorization":
        ctx = Context(scene=base.scene, position=base.position, accessory=rng.choice(ATTRIBUTES["accessory"][1:]))
    elif skill == "stylization":
        ctx = Context(scene=base.scene, style=rng.choice(ATTRIBUTES["style"][1:]))
    else:
        ctx = Context(scene=base.scene, view=rng.choice(ATTRIBUTES["view"][1:]))
    return ctx, skill


TARGET_KINDS = ("expert", "same_page")


def same_page_target_context(rng: random.Random) -> Context:
    """What another photo of the same shop page shows: mostly the product as sold (the crawl's mix)."""
    ctx = random_context(rng, p_specified=0.55)
    if rng.random() < 0.7:
        ctx = Context(scene=ctx.scene, position=ctx.position, size=ctx.size, view=ctx.view,
                      accessory=ctx.accessory if rng.random() < 0.3 else None)
    return ctx


def training_example(seed: int, size: int = 32, k: int = 3, targets: str = "expert") -> ICLExample:
    """One in-context training example of a random training subject: k exemplar photos in random
    contexts with their captions, and the target: with ``targets="expert"`` the expert's render of the
    subject in a new context in DreamBooth's skill mix; with ``"same_page"`` another photo of the
    subject as a shop page shows it (the baseline that SuTI's expert targets replace)."""
    if targets not in TARGET_KINDS:
        raise ValueError(f"targets must be one of {TARGET_KINDS}, got {targets!r}")
    rng = random.Random(f"icl:{seed}")
    subject = training_subject(rng)
    exemplar_images, exemplar_texts = [], []
    for _ in range(k):
        c = random_context(rng, p_specified=0.5)
        c = Context(scene=c.scene, position=c.position, size=c.size, view=c.view)
        exemplar_images.append(render(subject, c, size=size, seed=rng.randrange(2**31), jitter=0.04))
        exemplar_texts.append(f"a photo of {prompt_for(subject.noun, c)}")
    if targets == "same_page":
        ctx, skill = same_page_target_context(rng), "same_page"
    else:
        ctx, skill = random_target_context(rng, subject)
    target = render(subject, ctx, size=size, seed=rng.randrange(2**31))
    return ICLExample(exemplar_images, exemplar_texts, target, prompt_for(subject.noun, ctx), subject, ctx, skill)


def render_expert_target(subject: Subject, prompt: str, size: int = 64, seed: int = 0) -> Image.Image:
    """The world's expert: the ground-truth render of `prompt` for `subject` (the prompt is read by
    keywords, so a builder's own wording and subject noun work: "a zorb toy, but blue")."""
    return render_prompt(subject, prompt, size=size, seed=seed)


__all__ = ["NUM_HELDOUT", "heldout_subjects", "is_heldout", "training_subject", "BenchmarkPrompt", "HeldOutSubject",
           "heldout_subject", "write_benchmark", "read_benchmark_subject", "ICLExample", "training_example",
           "random_target_context", "render_expert_target", "SKILLS", "TARGET_KINDS",
           "same_page_target_context"]
