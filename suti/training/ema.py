"""Exponential moving average of a model's weights, kept on a shadow copy of the model.

The shadow copy is a full module, so sampling and export use it directly (``ema.module``).
Warm-up (``warmup=True``) uses decay_n = min(decay, (1 + n) / (10 + n)) for the n-th update, so
early averages are not dominated by the random initialisation.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.num_updates = 0

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.module.parameters())
        params = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params)]
        if len(params) != len(ema_params):
            raise ValueError("EMA shadow and model have different parameter lists")
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay_at(self.num_updates))
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.num_updates += 1

    def to(self, device) -> "EMA":
        self.module.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def meta(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}

    def load(self, state_dict: dict[str, torch.Tensor], meta: dict) -> None:
        self.module.load_state_dict(state_dict)
        self.num_updates = int(meta["num_updates"])
