"""Samplers as plain functions over a denoiser, plus guidance and thresholding.

A *denoiser* is any callable ``denoise(x_t, t, step) -> x0_hat`` where ``t`` is a (B,) tensor of
continuous times in [0, 1] and ``step`` the sampler's step index (interleaved guidance uses it).
Samplers walk t from 1 to 0 on the cosine log-SNR schedule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .diffusion import alpha_sigma, cosine_logsnr

Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


# ----------------------------------------------------------------------------- thresholding
def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Imagen: s = max(1, quantile(|x0|, p)) per sample; clip x0 to [-s, s] and divide by s."""
    s = torch.quantile(x0.detach().abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def apply_threshold(x0: torch.Tensor, mode: str | None, percentile: float = 0.995) -> torch.Tensor:
    if mode in (None, "none"):
        return x0
    if mode == "static":
        return x0.clamp(-1.0, 1.0)
    if mode == "dynamic":
        return dynamic_threshold(x0, percentile)
    raise ValueError(f"threshold must be 'dynamic', 'static' or 'none', got {mode!r}")


# ----------------------------------------------------------------------------- guidance
GUIDANCE_MODES = ("none", "text", "context", "joint", "interleaved")


@dataclass
class Guidance:
    """Classifier-free guidance. Branch names: ``full`` (text+context), ``no_text`` (context only),
    ``no_context`` (text only), ``uncond`` (neither).

    - ``text``:  x(c_p, c_n) vs x(c_n)       -- text guidance (Re-Imagen); plain CFG when no context
    - ``context``: x(c_p, c_n) vs x(c_p)     -- context guidance
    - ``joint``: x(c_p, c_n) vs x(none)      -- both dropped together
    - ``interleaved``: text guidance on a ``text_ratio`` fraction of steps, context guidance on the rest
    """

    scale: float = 5.0
    mode: str = "interleaved"  # what generation uses; without context every mode is plain text CFG
    context_scale: float | None = None
    text_ratio: float = 0.5

    def __post_init__(self):
        if self.mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance mode must be one of {GUIDANCE_MODES}, got {self.mode!r}")
        if not 0.0 <= self.text_ratio <= 1.0:
            raise ValueError(f"guidance text_ratio must be in [0, 1], got {self.text_ratio}")

    def plan(self, step: int, has_context: bool) -> tuple[str | None, float]:
        """(reference branch, weight) for this step; reference None means no guidance on this step.

        A weight of 1 is no guidance, so each step is checked with the weight it would use: with
        ``scale=1, context_scale=3`` the context-guided steps are guided and the text-guided ones are not.
        """
        if self.mode == "none":
            return None, 1.0
        if not has_context:
            ref, w = "uncond", self.scale  # plain text-to-image classifier-free guidance
        else:
            ctx_scale = self.scale if self.context_scale is None else self.context_scale
            if self.mode == "text":
                ref, w = "no_text", self.scale
            elif self.mode == "context":
                ref, w = "no_context", ctx_scale
            elif self.mode == "joint":
                ref, w = "uncond", self.scale
            else:
                # Interleaved: spread the text-guided steps evenly (Bresenham) so the ratio holds at any step
                # count, starting with a text step: the layout the prompt asks for forms in the first, noisiest
                # steps, the subject's look in the later ones.
                r = self.text_ratio
                text_step = int((step + 1) * r + 1 - r) > int(step * r + 1 - r)
                ref, w = ("no_text", self.scale) if text_step else ("no_context", ctx_scale)
        return (None, 1.0) if w == 1.0 else (ref, w)

    def branches_used(self, steps: int, has_context: bool) -> set[str]:
        """The reference branches a run of ``steps`` steps compares against (what training must have seen)."""
        return {ref for ref, _ in (self.plan(i, has_context) for i in range(steps)) if ref is not None}


def guided_denoiser(branches: Callable[[torch.Tensor, torch.Tensor, list[str]], list[torch.Tensor]],
                    guidance: Guidance, has_context: bool) -> Denoiser:
    """Turn ``branches(x, t, names) -> [x0 per branch]`` (one batched model call) into a guided denoiser."""

    def denoise(x, t, step):
        ref, w = guidance.plan(step, has_context)
        if ref is None:
            return branches(x, t, ["full"])[0]
        cond, base = branches(x, t, ["full", ref])
        return base + w * (cond - base)

    return denoise


# ----------------------------------------------------------------------------- samplers
def time_grid(steps: int, device=None, t_start: float = 1.0) -> torch.Tensor:
    """``steps + 1`` times from ``t_start`` down to 0, evenly spaced."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    return torch.linspace(t_start, 0.0, steps + 1, device=device)


def schedule(logsnr_min: float = -20.0, logsnr_max: float = 20.0,
             logsnr_fn: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """The t -> log-SNR map a sampler walks: the cosine schedule, or ``logsnr_fn`` (e.g. a bridged discrete one)."""
    if logsnr_fn is not None:
        return logsnr_fn
    return lambda tt: cosine_logsnr(tt, logsnr_min, logsnr_max)


def _step(x, x0, t, s, logsnr_fn, eta: float, generator, noise_std: torch.Tensor | None = None):
    """One DDIM(eta) step from time t to s < t. eta=1 is DDPM ancestral sampling. ``noise_std`` replaces the
    posterior's standard deviation of the added noise (a model that predicts its own variance, as IF does)."""
    lt, ls = logsnr_fn(t), logsnr_fn(s)
    at, st = alpha_sigma(lt)
    as_, ss = alpha_sigma(ls)
    b = lambda v: v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)  # noqa: E731
    eps = (x - b(at) * x0) / b(st)
    # Posterior variance of q(x_s | x_t, x0) is sigma_s^2 (1 - SNR_t / SNR_s).
    c2 = (eta**2) * ss**2 * (1.0 - torch.exp(lt - ls))
    c2 = c2.clamp(min=0.0)
    mean = b(as_) * x0 + b((ss**2 - c2).clamp(min=0.0).sqrt()) * eps
    if eta == 0.0:
        return mean
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    std = b(c2.sqrt()) if noise_std is None else noise_std.to(x.dtype)
    return mean + std * noise


def ddim_sample(denoise: Denoiser, x_T: torch.Tensor, steps: int = 50, eta: float = 0.0, *,
                threshold: str | None = "dynamic", percentile: float = 0.995, logsnr_min: float = -20.0,
                logsnr_max: float = 20.0, generator: torch.Generator | None = None, progress=None,
                callback: Callable | None = None, t_start: float = 1.0,
                logsnr_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                noise_std_fn: Callable | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021) from x_T ~ N(0, I) at time ``t_start``. eta=0 is deterministic.
    ``logsnr_fn`` replaces the cosine schedule (then ``logsnr_min``/``logsnr_max`` are unused).
    ``noise_std_fn(step, t, s)``, called after that step's denoise, may return the standard deviation of the
    noise added on the way to ``s`` (a learned variance), or None for the posterior's."""
    logsnr_fn = schedule(logsnr_min, logsnr_max, logsnr_fn)
    ts = time_grid(steps, x_T.device, t_start)
    x = x_T
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=progress if isinstance(progress, str) else "sampling", leave=False)
    for i in it:
        t = ts[i].expand(x.shape[0])
        s = ts[i + 1].expand(x.shape[0])
        x0 = apply_threshold(denoise(x, t, i), threshold, percentile)
        if i == steps - 1:
            x = x0  # t -> 0: return the (thresholded) prediction itself
        else:
            std = None if noise_std_fn is None or eta == 0.0 else noise_std_fn(i, t, s)
            x = _step(x, x0, t, s, logsnr_fn, eta, generator, noise_std=std)
        if callback is not None:
            callback(i, x, x0)
    return x


def ddpm_sample(denoise: Denoiser, x_T: torch.Tensor, steps: int = 250, **kw) -> torch.Tensor:
    """Ancestral sampling from the DDPM posterior q(x_s | x_t, x0_hat)."""
    kw.pop("eta", None)
    return ddim_sample(denoise, x_T, steps, eta=1.0, **kw)


from .multistep import dpmpp_2m_sample, unipc_sample  # noqa: E402  (multistep imports this module lazily)

SAMPLERS = {"ddim": ddim_sample, "ddpm": ddpm_sample, "dpmpp_2m": dpmpp_2m_sample, "unipc": unipc_sample}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
