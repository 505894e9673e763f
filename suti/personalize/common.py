"""Shared helpers for the per-subject baselines."""
from __future__ import annotations

import torch

from ..images import ImageLike, load_image_tensor


def subject_tensor(images: list[ImageLike], size: int, fit: str = "center-crop") -> torch.Tensor:
    if not images:
        raise ValueError("personalisation needs at least one subject image")
    return torch.stack([load_image_tensor(im, size, fit) for im in images])


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips: the only augmentation that never changes the subject's identity."""
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    out = batch.clone()
    out[flip] = out[flip].flip(-1)
    return out


def pick(n_total: int, n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, n_total, (n,), generator=generator)
