"""Stage 7: new-context prompts per cluster, from skill templates or a pluggable text-generation model.

Prompts carry a `{subject}` slot. The subject phrase of a cluster is mined from its captions (the content words
that occur in at least half of them, in the order of the first caption), or, for a page without any text, from
the words of its URL's last descriptive path segment (url_subject); an expert may fill the slot with its own
subject token (DreamBooth: "a sks teapot").
"""
from __future__ import annotations

import random
import re
from collections import Counter
from urllib.parse import unquote, urlsplit

from .config import PromptConfig
from .counts import Counts
from .inputs import load_factory
from .records import Prompt, hash64

SKILL_TEMPLATES: dict[str, list[str]] = {
    "recontextualization": [
        "{subject} on a sandy beach", "{subject} in the middle of a snowy forest", "{subject} on a kitchen table",
        "{subject} on a city street at night", "{subject} floating in outer space", "{subject} in a grassy meadow",
        "{subject} on top of a mountain", "{subject} in a cozy living room", "{subject} underwater near a coral reef",
        "{subject} in front of the Eiffel Tower",
    ],
    "stylization": [
        "a watercolor painting of {subject}", "an oil painting of {subject} in the style of Van Gogh",
        "a pencil sketch of {subject}", "{subject} as a cartoon illustration", "a pixel art image of {subject}",
        "a low-poly 3D render of {subject}", "a Japanese woodblock print of {subject}", "a mosaic of {subject}",
    ],
    "property_change": [
        "{subject}, but bright red", "{subject}, but made of gold", "{subject}, but made of glass",
        "{subject}, but blue", "{subject}, but made of wood", "a tiny version of {subject}",
        "{subject}, but covered in snow", "{subject}, but made of lego bricks",
    ],
    "accessorization": [
        "{subject} wearing a party hat", "{subject} with a red scarf", "{subject} wearing sunglasses",
        "{subject} with a flower garland", "{subject} wearing a santa hat", "{subject} with a small bow tie",
    ],
    "new_view": [
        "a top-down view of {subject}", "a side view of {subject}", "a close-up photo of {subject}",
        "a photo of the back of {subject}", "a wide-angle shot of {subject} from below",
        "a photo of {subject} seen from far away",
    ],
}

STOPWORDS = frozenset("""a an the and or of in on at to for with by from this that these those is are was were be
been it its my our your their his her photo photos image images picture pictures pic jpg jpeg png view stock
new sale buy free shop online best high quality hd x s de la le""".split())
_WORD = re.compile(r"[a-zA-Z][a-zA-Z'-]*")


def subject_phrase(captions: list[str], max_words: int = 3) -> str:
    """'zorb teapot' from ['Red zorb teapot on a table', 'zorb teapot, side view', ...]; '' when none."""
    docs = [[w.lower() for w in _WORD.findall(c)] for c in captions if c]
    docs = [[w for w in d if w not in STOPWORDS and len(w) > 1] for d in docs]
    docs = [d for d in docs if d]
    if not docs:
        return ""
    df = Counter(w for d in docs for w in set(d))
    common = {w for w, n in df.items() if n * 2 >= len(docs) and n >= 2} if len(docs) > 1 else set(docs[0])
    if not common:
        return ""
    first = next(d for d in docs if any(w in common for w in d))
    ordered: list[str] = []
    for w in first:
        if w in common and w not in ordered:
            ordered.append(w)
    top = sorted(ordered, key=lambda w: -df[w])[:max_words]
    return " ".join(w for w in ordered if w in top)


# path words that name a kind of page, not its subject
_URL_GENERIC = frozenset("""item items product products wiki page pages post posts story stories article articles
detail details html htm php asp aspx jsp shop store category categories catalog catalogue gallery galleries
index default view show""".split())


def url_subject(page_url: str, max_words: int = 3) -> str:
    """'blue teapot' from 'https://shop.example.com/p/blue-teapot.html' (the last path segment with alphabetic
    words that are not generic page words); '' when there is none (ids, hashes, bare hosts)."""
    for seg in reversed([s for s in unquote(urlsplit(page_url).path).split("/") if s]):
        words = [w.lower() for w in re.split(r"[^\w]+|_", seg) if w.isalpha() and len(w) > 2]
        words = [w for w in words if w not in STOPWORDS and w not in _URL_GENERIC]
        if words:
            return " ".join(words[:max_words])
    return ""


def cluster_subject(captions: list[str], page_url: str, counts: Counts | None = None) -> str:
    """The subject with its article ("a zorb teapot"): from the captions, else the page URL, else "the subject"."""
    phrase = subject_phrase(captions)
    if not phrase:
        phrase = url_subject(page_url)
        if phrase and counts is not None:
            counts.add("prompts.subject_from_url")
    return with_article(phrase)


def with_article(phrase: str) -> str:
    if not phrase:
        return "the subject"
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


class TemplatePromptGenerator:
    """Round-robin over skills, templates drawn without replacement; seeded per cluster, so reruns match."""

    def __init__(self, skills: list[str] | None = None, seed: int = 0, templates: dict | None = None):
        self.templates = templates or SKILL_TEMPLATES
        self.skills = list(skills or self.templates)
        unknown = [s for s in self.skills if s not in self.templates]
        if unknown:
            raise ValueError(f"prompts.skills: unknown skill(s) {unknown}; known: {sorted(self.templates)}")
        self.seed = seed

    def __call__(self, cluster_id: str, subject: str, n: int) -> list[Prompt]:
        rng = random.Random(hash64(f"{self.seed}:{cluster_id}"))
        pools = {s: rng.sample(self.templates[s], len(self.templates[s])) for s in self.skills}
        out = []
        for i in range(n):
            skill = self.skills[i % len(self.skills)]
            pool = pools[skill]
            out.append(Prompt(template=pool[(i // len(self.skills)) % len(pool)], skill=skill, subject=subject))
        return out


SKILL_INSTRUCTIONS = {
    "recontextualization": "placed in a new place or scene",
    "stylization": "drawn in an art style",
    "property_change": "with a changed color or material",
    "accessorization": "wearing or holding an accessory",
    "new_view": "seen from a new viewpoint",
}


class TextGenerationPromptGenerator:
    """Prompts from a causal LM (HF name or folder), loaded lazily. Or pass `fn(subject, skill, n)->list[str]`.

    A generated line is kept when it mentions the subject phrase (which becomes the `{subject}` slot);
    otherwise a template prompt fills the place and `prompts.fallback` is counted.
    """

    def __init__(self, model: str | None = None, fn=None, skills: list[str] | None = None, seed: int = 0,
                 device: str = "cpu", max_new_tokens: int = 48):
        if model is None and fn is None:
            raise ValueError("text-generation prompts need prompts.model (HF name or folder) or a factory fn")
        self.model_name, self.fn, self.device, self.max_new_tokens = model, fn, device, max_new_tokens
        self.fallback = TemplatePromptGenerator(skills, seed)
        self.skills = self.fallback.skills
        self._model = self._tok = None
        self.last_fallbacks = 0

    def _generate(self, subject: str, skill: str, n: int) -> list[str]:
        if self.fn is not None:
            return list(self.fn(subject, skill, n))
        import torch
        import transformers as tf
        if self._model is None:
            self._tok = tf.AutoTokenizer.from_pretrained(self.model_name)
            self._model = tf.AutoModelForCausalLM.from_pretrained(self.model_name).to(self.device).eval()
        text = f"Write a short image caption of {subject} {SKILL_INSTRUCTIONS.get(skill, skill)}.\nCaption:"
        ids = self._tok(text, return_tensors="pt").to(self.device)
        with torch.no_grad():  # greedy: one reproducible answer per instruction; extra slots use templates
            gen = self._model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                       pad_token_id=self._tok.pad_token_id or self._tok.eos_token_id)
        return [self._tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)]

    def __call__(self, cluster_id: str, subject: str, n: int) -> list[Prompt]:
        templated = self.fallback(cluster_id, subject, n)
        per_skill = Counter(p.skill for p in templated)
        generated: dict[str, list[str]] = {}
        for skill, k in per_skill.items():
            lines = []
            for text in self._generate(subject, skill, k):
                lines.extend(line.strip(" \"'") for line in str(text).splitlines() if line.strip())
            generated[skill] = [ln.replace(subject, "{subject}", 1) for ln in lines
                                if subject and subject in ln and "{" not in ln.replace(subject, "")]
        out, used, self.last_fallbacks = [], Counter(), 0
        for p in templated:
            cands = generated.get(p.skill, [])
            if used[p.skill] < len(cands):
                out.append(Prompt(template=cands[used[p.skill]], skill=p.skill, subject=subject))
                used[p.skill] += 1
            else:
                out.append(p)
                self.last_fallbacks += 1
        return out


def load_prompt_generator(cfg: PromptConfig, seed: int):
    if cfg.generator == "templates":
        return TemplatePromptGenerator(cfg.skills, seed)
    if cfg.generator == "text-generation":
        fn = load_factory(cfg.factory)(**cfg.kwargs) if cfg.factory else None
        return TextGenerationPromptGenerator(cfg.model, fn=fn, skills=cfg.skills, seed=seed, device=cfg.device,
                                             max_new_tokens=cfg.max_new_tokens)
    if cfg.generator == "factory":
        return load_factory(cfg.factory)(**cfg.kwargs)
    raise ValueError(f"prompts.generator must be templates, text-generation or factory, got {cfg.generator!r}")


def prompts_for(generator, cluster_id: str, subject: str, n: int, counts: Counts) -> list[Prompt]:
    prompts = generator(cluster_id, subject, n)
    for p in prompts:
        counts.add(f"prompts.by_skill.{p.skill}")
    counts.add("prompts.generated", len(prompts))
    counts.add("prompts.fallback", getattr(generator, "last_fallbacks", 0))
    return prompts
