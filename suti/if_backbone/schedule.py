"""Bridge from IF's discrete DDPM schedule to the project's continuous-time samplers.

IF is trained on ``N = 1000`` discrete timesteps k with cumulative products alpha_bar[k] (a
``squaredcos_cap_v2`` beta schedule) and predicts epsilon (3 channels) plus a learned variance (3 more).
The project's samplers walk a time grid ``t_i = (S - i) / S`` (S steps) and only need two things:
the log-SNR at each grid time (``logsnr_fn``) and an x0 prediction from the denoiser.

The bridge is one rule: grid time t is the discrete timestep that diffusers' ``DDPMScheduler`` visits
at that position for S inference steps,

    "leading"  (IF's default): j = round(t S) in 1..S,  k = (j - 1) * (N // S) + steps_offset
    "trailing":                k = round(t N) - 1

and ``logsnr_fn(t) = log(alpha_bar[k] / (1 - alpha_bar[k]))`` in float64. The last grid step returns the
(thresholded) x0 prediction itself, which is what ``DDPMScheduler`` does when the previous timestep is
-1 (alpha_bar_prev = 1). With that, the project's DDPM sampler's posterior mean and (fixed-small)
variance are those of ``DDPMScheduler.step``; see ``docs/pretrained.md`` for the learned variance.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# IF-I's scheduler_config.json (IF-II uses sample_max_value 1.0). Read from the model folder when present.
IF_SCHEDULER_DEFAULTS = {
    "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02,
    "prediction_type": "epsilon", "variance_type": "learned_range", "thresholding": True,
    "dynamic_thresholding_ratio": 0.95, "sample_max_value": 1.5, "clip_sample": True, "clip_sample_range": 1.0,
    "timestep_spacing": "leading", "steps_offset": 0,
}
LOGSNR_CLEAN = 40.0  # stands in for alpha_bar = 1 (t = 0); no sampler step evaluates it


@dataclass
class DiscreteSchedule:
    alphas_cumprod: torch.Tensor  # (N,) float32, exactly diffusers' DDPMScheduler.alphas_cumprod
    spacing: str = "leading"
    steps_offset: int = 0
    threshold_ratio: float = 0.95
    sample_max_value: float = 1.5
    clip_range: float = 1.0

    def __post_init__(self):
        if self.spacing not in ("leading", "trailing"):
            raise ValueError(f"timestep_spacing must be 'leading' or 'trailing', got {self.spacing!r}")
        self.alphas_cumprod = self.alphas_cumprod.detach().float().cpu()

    @classmethod
    def from_config(cls, config: dict | None = None) -> "DiscreteSchedule":
        """From a diffusers scheduler config (IF's ``scheduler/scheduler_config.json``); diffusers builds
        the betas so the table is bit-for-bit the one IF was trained and ships with."""
        from diffusers import DDPMScheduler

        cfg = {**IF_SCHEDULER_DEFAULTS, **(config or {})}
        if cfg.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"the IF bridge expects prediction_type 'epsilon', got {cfg['prediction_type']!r}")
        known = {k: v for k, v in cfg.items() if not k.startswith("_")}
        sched = DDPMScheduler.from_config(known)
        return cls(sched.alphas_cumprod, spacing=cfg["timestep_spacing"], steps_offset=int(cfg["steps_offset"]),
                   threshold_ratio=float(cfg["dynamic_thresholding_ratio"]),
                   sample_max_value=float(cfg["sample_max_value"]), clip_range=float(cfg["clip_sample_range"]))

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    # -- continuous time <-> discrete timestep ----------------------------------------------------
    def timesteps(self, t: torch.Tensor, steps: int) -> torch.Tensor:
        """Discrete timestep (long, -1 for t = 0) at grid time(s) ``t`` of an S-step run."""
        n = self.num_train_timesteps
        t = t.double()
        if self.spacing == "trailing":
            k = torch.round(t * n).long() - 1
        else:
            j = torch.round(t * steps).long()
            k = torch.where(j > 0, (j - 1) * (n // steps) + self.steps_offset, torch.full_like(j, -1))
        return k.clamp(min=-1, max=n - 1)

    def logsnr_of(self, k: torch.Tensor) -> torch.Tensor:
        """float64 log-SNR of discrete timesteps (``LOGSNR_CLEAN`` for k = -1)."""
        a = self.alphas_cumprod.double().to(k.device)[k.clamp(min=0)]
        return torch.where(k >= 0, torch.log(a) - torch.log1p(-a), torch.full_like(a, LOGSNR_CLEAN))

    def logsnr_fn(self, steps: int):
        """The ``logsnr_fn=`` a project sampler needs for an S-step run."""
        return lambda t: self.logsnr_of(self.timesteps(t, steps))

    # -- the model's parametrisation ---------------------------------------------------------------
    def alpha_bar(self, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar[k] broadcast over an image batch like ``like`` (float32 as in diffusers)."""
        a = self.alphas_cumprod.to(like.device)[k.clamp(min=0)]
        return a.reshape(-1, *([1] * (like.ndim - 1)))

    def x0_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar(k, x_t)
        return ((x_t - (1 - a) ** 0.5 * eps) / a**0.5).to(x_t.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q(x_k | x0), as ``DDPMScheduler.add_noise``."""
        a = self.alpha_bar(k, x0)
        return (a**0.5 * x0 + (1 - a) ** 0.5 * noise).to(x0.dtype)

    def sample_timesteps(self, batch: int, device, generator=None) -> torch.Tensor:
        """Uniform training timesteps in 0..N-1 (IF's training distribution)."""
        return torch.randint(0, self.num_train_timesteps, (batch,), device=device, generator=generator)

    def learned_log_variance(self, v: torch.Tensor, k: torch.Tensor, k_prev: torch.Tensor) -> torch.Tensor:
        """IF's ``learned_range`` variance of the step k -> k_prev (log, per pixel) from the U-Net's last 3
        output channels ``v`` in [-1, 1]: between the posterior variance and beta_t of that (respaced) step.
        The project samplers draw their noise from the schedule alone (the posterior variance, the lower
        end of this range); this is what a per-step variance hook would need."""
        a_t = self.alpha_bar(k, v).float()
        a_prev = torch.where(k_prev.reshape(-1, *([1] * (v.ndim - 1))) >= 0, self.alpha_bar(k_prev, v).float(),
                             torch.ones_like(a_t))
        beta_t = 1 - a_t / a_prev
        posterior = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
        frac = (v.float() + 1) / 2
        return frac * torch.log(beta_t) + (1 - frac) * torch.log(posterior)

    # -- thresholding -----------------------------------------------------------------------------
    def threshold(self, x0: torch.Tensor, mode: str | None) -> torch.Tensor:
        """IF's x0 thresholding. ``dynamic``: s = clamp(quantile(|x0|, ratio), 1, sample_max_value) per
        image, x0 clipped to [-s, s] and divided by s (as DDPMScheduler._threshold_sample); ``static``:
        clip to the clip range; ``none``: untouched."""
        if mode in (None, "none"):
            return x0
        if mode == "static":
            return x0.clamp(-self.clip_range, self.clip_range)
        if mode != "dynamic":
            raise ValueError(f"threshold must be 'dynamic', 'static' or 'none', got {mode!r}")
        flat = x0.float().reshape(x0.shape[0], -1)
        s = torch.quantile(flat.abs(), self.threshold_ratio, dim=1).clamp(min=1, max=self.sample_max_value)[:, None]
        return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(x0.dtype)


def aug_timestep(level: torch.Tensor, n: int) -> torch.Tensor:
    """Noise-conditioning level in [0, 1] -> IF-II's ``noise_level`` timestep (0.25 -> 250, its default)."""
    return torch.round(level.double() * n).long().clamp(0, n - 1)
