"""Encoder reuse for exemplars (Re-Imagen / SuTI) and the exemplar feature cache.

Each exemplar (image, text) goes through the *same* U-Net's down stack and middle block with its own
text, at noise level t=0. Its feature maps at the context levels are flattened and concatenated over
the K exemplars, with a mask so batches can mix K = 1..5 (padded slots are masked out).

Because the exemplars are clean (t=0), their features do not depend on the sampling step, so
``ExemplarContext`` encodes them once per generation and hands the same tensors to every step and
every guidance branch. ``cache=False`` recomputes them on every call (for benchmarks and tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .unet import EfficientUNet, ProjectedContext


@dataclass
class Exemplars:
    """K exemplar pairs per batch row. ``mask`` marks real (not padded) slots."""

    images: torch.Tensor  # (B, K, C, H, W) in [-1, 1]
    text_emb: torch.Tensor  # (B, K, L, D)
    text_mask: torch.Tensor  # (B, K, L) bool
    mask: torch.Tensor  # (B, K) bool

    def __post_init__(self):
        b, k = self.images.shape[:2]
        if self.text_emb.shape[:2] != (b, k) or self.text_mask.shape[:2] != (b, k) or tuple(self.mask.shape) != (b, k):
            raise ValueError(
                f"exemplar shapes disagree: images {tuple(self.images.shape)}, text_emb {tuple(self.text_emb.shape)}, "
                f"text_mask {tuple(self.text_mask.shape)}, mask {tuple(self.mask.shape)}")
        if not bool(self.mask.any(dim=1).all()):
            raise ValueError("every batch row needs at least one exemplar (mask row is all False)")

    @property
    def k(self) -> int:
        return self.images.shape[1]

    def repeat(self, n: int) -> "Exemplars":
        """Repeat each row n times (e.g. several images per prompt)."""
        r = lambda t: t.repeat_interleave(n, dim=0)  # noqa: E731
        return Exemplars(r(self.images), r(self.text_emb), r(self.text_mask), r(self.mask))

    def to(self, device=None, dtype=None) -> "Exemplars":
        return Exemplars(self.images.to(device=device, dtype=dtype), self.text_emb.to(device=device, dtype=dtype),
                         self.text_mask.to(device), self.mask.to(device))


def encode_exemplars(unet: EfficientUNet, ex: Exemplars, t: float = 0.0, lowres: torch.Tensor | None = None) -> dict:
    """Run exemplars through the down stack + middle. Returns ``{key: (tokens (B, K*h*w, C), mask (B, K*h*w))}``."""
    b, k = ex.images.shape[:2]
    flat = lambda x: x.reshape(b * k, *x.shape[2:])  # noqa: E731
    times = torch.full((b * k,), float(t), device=ex.images.device)
    feats = unet.exemplar_features(flat(ex.images), times, flat(ex.text_emb), flat(ex.text_mask),
                                   lowres=None if lowres is None else flat(lowres),
                                   aug_level=torch.zeros_like(times) if unet.config.lowres_cond else None)
    out = {}
    for key, f in feats.items():
        _, c, h, w = f.shape
        tokens = f.reshape(b, k, c, h * w).permute(0, 1, 3, 2).reshape(b, k * h * w, c)
        mask = ex.mask[:, :, None].expand(b, k, h * w).reshape(b, k * h * w)
        out[key] = (tokens, mask)
    return out


def drop_context(features: dict, keep: torch.Tensor) -> dict:
    """Mask out the exemplars of rows where ``keep`` (B,) is False (context dropped)."""
    return type(features)((key, (tok, mask & keep[:, None].to(mask.device))) for key, (tok, mask) in features.items())


def concat_context(parts: list[dict]) -> dict:
    """Concatenate context dicts along the batch (one per guidance branch)."""
    return type(parts[0])((key, (torch.cat([p[key][0] for p in parts]), torch.cat([p[key][1] for p in parts])))
                          for key in parts[0])


class ExemplarContext:
    """Exemplar context for one generation: encoded and projected to each context layer's keys and
    values once, then reused at every step and guidance branch (``cache=True``). ``cache=False``
    redoes both on every call (the benchmark's reference; same numbers, more time)."""

    def __init__(self, unet: EfficientUNet, exemplars: Exemplars, t: float = 0.0, lowres=None, cache: bool = True,
                 batch: int | None = None):
        """``batch``: rows the sampler runs. Exemplars with fewer rows (one subject for several images or
        prompts) are encoded at their own batch size and their keys/values repeated to ``batch`` rows."""
        b = exemplars.images.shape[0]
        if batch is not None and batch % b:
            raise ValueError(f"{b} exemplar rows cannot be spread over a batch of {batch}")
        self.unet, self.exemplars, self.t, self.lowres, self.cache = unet, exemplars, t, lowres, cache
        self.repeats = 1 if batch is None else batch // b
        self._features = None
        self.encode_calls = 0

    def features(self) -> ProjectedContext:
        if self._features is not None:
            return self._features
        self.encode_calls += 1
        feats = self.unet.project_context(encode_exemplars(self.unet, self.exemplars, self.t, self.lowres))
        if self.repeats > 1:
            feats = ProjectedContext((key, (kv.repeat_interleave(self.repeats, 0), m.repeat_interleave(self.repeats, 0)))
                                     for key, (kv, m) in feats.items())
        if self.cache:
            self._features = feats
        return feats
