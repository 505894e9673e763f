"""Shared helpers of the IF backbone tests (no diffusers import here)."""
import torch

TEXT_DIM, TEXT_LEN = 32, 8


def exemplars(b=1, k=2, size=16, seed=3):
    from suti.context import Exemplars

    g = torch.Generator().manual_seed(seed)
    return Exemplars(images=torch.rand(b, k, 3, size, size, generator=g) * 2 - 1,
                     text_emb=torch.randn(b, k, TEXT_LEN, TEXT_DIM, generator=g),
                     text_mask=torch.ones(b, k, TEXT_LEN, dtype=torch.bool), mask=torch.ones(b, k, dtype=torch.bool))
