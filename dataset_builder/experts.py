"""Stage 8: expert targets (apprenticeship) and their CLIP filter.

An Expert renders target images for a cluster's new-context prompts. DreamBoothExpert fine-tunes a copy of the
base stage on the cluster (suti.personalize.dreambooth) and samples the prompts with it; HeldOutExpert is the
naive baseline that takes another real image of the same cluster. Targets are kept when CLIP-T (target vs its
prompt) >= min_clip_t and CLIP-I (mean cosine to the exemplars) >= min_clip_i; the keep rate is recorded.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .config import ExpertConfig
from .counts import Counts
from .embedding import embed_images, embed_texts, open_image
from .inputs import load_factory
from .records import Cluster, Prompt, Target, hash64


@runtime_checkable
class Expert(Protocol):
    name: str

    def render(self, cluster: Cluster, exemplars: list[int], prompts: list[Prompt]) -> list[Target]:
        """Targets for `prompts` given the cluster (exemplars: member indices shown to the apprentice)."""
        ...


class HeldOutExpert:
    """Baseline: each member not used as an exemplar becomes a target, with its own caption as prompt.
    A model trained on these learns to copy pages, which is what the apprenticeship avoids."""

    name = "held_out"
    uses_prompts = False  # its targets keep their own captions

    def __init__(self, max_targets: int | None = None):
        self.max_targets = max_targets

    def render(self, cluster: Cluster, exemplars: list[int], prompts: list[Prompt]) -> list[Target]:
        held = [i for i in range(len(cluster.members)) if i not in set(exemplars)]
        if self.max_targets is not None:
            held = held[: self.max_targets]
        out = []
        for i in held:
            m = cluster.members[i]
            # the stored JPEG is the target as is: no decode, no second lossy encode
            out.append(Target(image=None, jpeg=m.record.image, prompt=m.caption or m.record.text,
                              skill="held_out", expert=self.name, source_url=m.record.image_url))
        return out


class DreamBoothExpert:
    """Fine-tunes a copy of the base stage on the cluster's images, then renders every prompt with it.

    pipeline: a suti.pipeline.SuTIPipeline, or a checkpoint folder loaded lazily with SuTIPipeline.from_pretrained.
    dreambooth: keyword arguments of suti.personalize.DreamBoothConfig (e.g. {"steps": 400}).
    train_on: "all" members or only the "exemplars". The class noun is the last word of the subject phrase.
    sample_kwargs: extra keyword arguments of the pipeline call (e.g. {"stop_at": 0} for base-stage targets).
    pipeline_kwargs: keyword arguments of SuTIPipeline.from_pretrained (e.g. {"device": "cuda"}).
    """

    name = "dreambooth"

    def __init__(self, pipeline, dreambooth: dict | None = None, num_images: int = 1, steps: int = 50,
                 guidance: float = 5.0, train_on: str = "all", seed: int = 0, progress: bool = False,
                 sample_kwargs: dict | None = None, pipeline_kwargs: dict | None = None):
        if train_on not in ("all", "exemplars"):
            raise ValueError(f"DreamBoothExpert.train_on must be 'all' or 'exemplars', got {train_on!r}")
        self._pipeline = pipeline
        self.dreambooth_kwargs = dict(dreambooth or {})
        self.num_images, self.steps, self.guidance = num_images, steps, guidance
        self.train_on, self.seed, self.progress = train_on, seed, progress
        self.sample_kwargs, self.pipeline_kwargs = dict(sample_kwargs or {}), dict(pipeline_kwargs or {})

    @property
    def pipeline(self):
        if isinstance(self._pipeline, (str, bytes)) or hasattr(self._pipeline, "__fspath__"):
            from suti.pipeline import SuTIPipeline  # lazy: the builder runs without suti's model code loaded
            self._pipeline = SuTIPipeline.from_pretrained(str(self._pipeline), **self.pipeline_kwargs)
        return self._pipeline

    def render(self, cluster: Cluster, exemplars: list[int], prompts: list[Prompt]) -> list[Target]:
        from suti.personalize import DreamBoothConfig, dreambooth
        idx = exemplars if self.train_on == "exemplars" else list(range(len(cluster.members)))
        images = [open_image(cluster.members[i].record.image, draft_side=None) for i in idx]
        subject = prompts[0].subject if prompts else ""
        class_noun = (subject.split() or ["object"])[-1]
        result = dreambooth(self.pipeline, images, class_noun, DreamBoothConfig(**self.dreambooth_kwargs),
                            progress=self.progress)
        token = result.instance_prompt
        out = []
        for j, p in enumerate(prompts):
            seed = hash64(f"{self.seed}:{cluster.cluster_id}:{j}") % (2**31)
            for im in result.pipe(p.template.format(subject=token), num_images=self.num_images, steps=self.steps,
                                  guidance=self.guidance, seed=seed, **self.sample_kwargs):
                out.append(Target(image=im, prompt=p.text, skill=p.skill, expert=self.name))
        return out


def load_expert(cfg: ExpertConfig, seed: int = 0):
    if cfg.type == "held_out":
        return HeldOutExpert(**cfg.kwargs)
    if cfg.type == "dreambooth":
        return DreamBoothExpert(**{"seed": seed, **cfg.kwargs})
    if cfg.type == "factory":
        return load_factory(cfg.factory)(**cfg.kwargs)
    raise ValueError(f"expert.type must be held_out, dreambooth or factory, got {cfg.type!r}")


def filter_targets(targets: list[Target], exemplar_emb: np.ndarray, embedder, cfg: ExpertConfig,
                   batch_size: int, counts: Counts) -> list[Target]:
    """Scores every target (clip_t, clip_i), marks kept/reject_reason, returns the kept ones.
    A target with an empty prompt is dropped unscored (expert.dropped.empty_prompt): the trainer refuses it."""
    if not targets:
        return []
    from .decode import encode_jpeg
    for t in targets:
        if t.jpeg is None:
            t.jpeg = encode_jpeg(t.image, 95)
        counts.add("expert.rendered")
    scored = [t for t in targets if (t.prompt or "").strip()]
    for t in targets:
        if not (t.prompt or "").strip():
            t.kept, t.reject_reason = False, "empty_prompt"
            counts.add("expert.dropped.empty_prompt")
    if not scored:
        return []
    t_img = embed_images(embedder, [t.jpeg for t in scored], batch_size)
    t_txt = embed_texts(embedder, [t.prompt for t in scored], batch_size)
    clip_t = np.sum(t_img * t_txt, axis=1)
    clip_i = (t_img @ exemplar_emb.T).mean(axis=1)
    kept = []
    for t, ct, ci in zip(scored, clip_t, clip_i):
        t.clip_t, t.clip_i = float(ct), float(ci)
        if t.clip_t < cfg.min_clip_t:
            t.kept, t.reject_reason = False, "clip_t_low"
        elif t.clip_i < cfg.min_clip_i:
            t.kept, t.reject_reason = False, "clip_i_low"
        else:
            t.kept = True
            kept.append(t)
            counts.add("expert.kept")
            continue
        counts.add(f"expert.dropped.{t.reject_reason}")
    return kept


__all__ = ["Expert", "HeldOutExpert", "DreamBoothExpert", "load_expert", "filter_targets"]
