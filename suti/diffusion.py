"""Continuous-time Gaussian diffusion with a cosine log-SNR schedule (Kingma et al. 2021; Imagen).

All the maths of one scheme lives here:
    alpha_t^2 = sigmoid(logsnr_t),  sigma_t^2 = sigmoid(-logsnr_t)
    x_t = alpha_t x0 + sigma_t eps
    v   = alpha_t eps - sigma_t x0        (Salimans & Ho 2022)
    x0  = alpha_t x_t - sigma_t v,  eps = sigma_t x_t + alpha_t v
Cosine schedule: logsnr(t) = -2 log tan(a t + b), with a, b chosen so logsnr(0)=max and logsnr(1)=min.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import DiffusionConfig


def cosine_logsnr(t: torch.Tensor, logsnr_min: float = -20.0, logsnr_max: float = 20.0) -> torch.Tensor:
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    out = -2.0 * torch.log(torch.tan(a * t.double() + b))  # float64: tan is steep near t=1
    return out.to(t.dtype if t.is_floating_point() and t.dtype != torch.float64 else torch.float32)


def alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def _b(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a (B,) tensor over an image batch."""
    return x.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def q_sample(x0: torch.Tensor, logsnr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward process: x_t = alpha x0 + sigma eps."""
    a, s = alpha_sigma(logsnr)
    return _b(a, x0) * x0 + _b(s, x0) * noise


def v_from_eps_x0(eps, x0, logsnr):
    a, s = alpha_sigma(logsnr)
    return _b(a, x0) * eps - _b(s, x0) * x0


def x0_from_v(x_t, v, logsnr):
    a, s = alpha_sigma(logsnr)
    return _b(a, x_t) * x_t - _b(s, x_t) * v


def eps_from_v(x_t, v, logsnr):
    a, s = alpha_sigma(logsnr)
    return _b(s, x_t) * x_t + _b(a, x_t) * v


def x0_from_eps(x_t, eps, logsnr):
    a, s = alpha_sigma(logsnr)
    return (x_t - _b(s, x_t) * eps) / _b(a, x_t)


def eps_from_x0(x_t, x0, logsnr):
    a, s = alpha_sigma(logsnr)
    return (x_t - _b(a, x_t) * x0) / _b(s, x_t)


def x0_from_output(out, x_t, logsnr, prediction: str):
    """Convert a model output (eps or v) to the predicted clean image."""
    if prediction == "v":
        return x0_from_v(x_t, out, logsnr)
    if prediction == "eps":
        return x0_from_eps(x_t, out, logsnr)
    raise ValueError(f"unknown prediction {prediction!r}")


def training_target(x0, noise, logsnr, prediction: str):
    return v_from_eps_x0(noise, x0, logsnr) if prediction == "v" else noise


def noise_augment(lowres: torch.Tensor, level: torch.Tensor, cfg: DiffusionConfig, noise=None):
    """Noise-conditioning augmentation of the low-res image: forward-diffuse it to ``level`` (B,) in [0,1]."""
    noise = torch.randn_like(lowres) if noise is None else noise
    return q_sample(lowres, cosine_logsnr(level, cfg.logsnr_min, cfg.logsnr_max), noise)


def sample_aug_level(batch: int, cfg: DiffusionConfig, device, train: bool, generator=None) -> torch.Tensor:
    """Random level in training, the fixed ``noise_aug_sample`` level at sampling."""
    if train:
        return torch.rand(batch, device=device, generator=generator) * cfg.noise_aug_max
    return torch.full((batch,), cfg.noise_aug_sample, device=device)


def drop_masks(batch: int, cfg: DiffusionConfig, device, generator=None,
               has_context: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row keep masks (keep_text, keep_context) for classifier-free guidance training.

    With context, each row is one of four disjoint cases, so every guidance branch is trained:
    text alone dropped (``text_drop_prob``; the "no_text" branch of text and interleaved guidance),
    context alone dropped (``context_drop_prob``; "no_context", context and interleaved guidance),
    both dropped (``joint_drop_prob``; "uncond", joint guidance), or nothing dropped.
    Without context, text is dropped with ``text_drop_prob`` (Imagen's 10%): the "uncond" branch of plain CFG.
    """
    u = torch.rand(batch, device=device, generator=generator)
    if not has_context:
        return u >= cfg.text_drop_prob, torch.ones(batch, dtype=torch.bool, device=device)
    p_text, p_ctx, p_joint = cfg.text_drop_prob, cfg.context_drop_prob, cfg.joint_drop_prob
    drop_text_only = u < p_text
    drop_ctx_only = (u >= p_text) & (u < p_text + p_ctx)
    drop_both = (u >= p_text + p_ctx) & (u < p_text + p_ctx + p_joint)
    return ~(drop_text_only | drop_both), ~(drop_ctx_only | drop_both)


def trained_branches(cfg: DiffusionConfig, has_context: bool) -> set[str]:
    """The guidance reference branches that ``drop_masks`` trains (see ``suti.sampling.Guidance``)."""
    if not has_context:
        return {"uncond"} if cfg.text_drop_prob > 0 else set()
    named = {"no_text": cfg.text_drop_prob, "no_context": cfg.context_drop_prob, "uncond": cfg.joint_drop_prob}
    return {name for name, p in named.items() if p > 0}


def cosine_t_from_logsnr(logsnr: float, logsnr_min: float = -20.0, logsnr_max: float = 20.0) -> float:
    """Inverse of ``cosine_logsnr``: the time at which the schedule reaches ``logsnr``."""
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    return min(1.0, max(0.0, (math.atan(math.exp(-0.5 * logsnr)) - b) / a))


def loss_weights(logsnr: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor | None:
    """Per-row loss weights, or None for the plain mean.

    v-prediction's loss is (1 + SNR) times the x0 error: every noise level counts. eps-prediction's is SNR
    times the x0 error, so at low SNR, where the layout of a picture is decided, an x0 error barely counts
    and the model never learns it; the x0 = (x - sigma eps) / alpha its samplers need is then wrong there.
    eps rows are weighted by max(1, 1/SNR) ("truncated SNR", Salimans & Ho 2022): the x0 error counts at
    least once at every level. The weight is capped where the samplers start (``sampling_logsnr_min``).
    """
    if cfg.prediction != "eps":
        return None
    cap = math.exp(-cfg.sampling_logsnr_min)
    return torch.exp(-logsnr.float()).clamp(min=1.0, max=cap)


def diffusion_loss(model_output, x0, noise, logsnr, cfg: DiffusionConfig) -> torch.Tensor:
    target = training_target(x0, noise, logsnr, cfg.prediction)
    diff = model_output.float() - target.float()
    per_row = (diff.abs() if cfg.loss == "l1" else diff ** 2).flatten(1).mean(1)
    w = loss_weights(logsnr, cfg)
    return per_row.mean() if w is None else (w * per_row).mean() / w.mean()
