"""Multistep ODE samplers over the continuous log-SNR schedule: DPM-Solver++(2M) and UniPC.

Same contract as ``suti.sampling.ddim_sample``: plain functions over a denoiser
``denoise(x_t, t, step) -> x0_hat``, walking t from ``t_start`` (1) to 0. They only call the denoiser, so
every guidance mode works; each x0 prediction is thresholded (``threshold``) before it is used, as in DDIM.
Both reuse the x0 predictions of earlier steps, so they cost one denoiser call per step, like DDIM.

Notation (Lu et al. 2022, "DPM-Solver++"): lambda = log(alpha / sigma) = logsnr / 2, h = lambda_s - lambda_t
for a step from t to s < t. The exact solution of the probability-flow ODE in data prediction is

    x_s = (sigma_s / sigma_t) x_t + sigma_s * integral_{lambda_t}^{lambda_s} e^lambda x0_hat(lambda) dlambda

and DDIM is its first-order version (x0_hat held constant): x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^-h) x0.

- DPM-Solver++(2M) extrapolates x0_hat linearly in lambda from the current and the previous prediction
  (second order). UniPC's predictor with B(h) = e^-h - 1 ("bh2") and order 2 is the same update.
- UniPC (Zhao et al. 2023) adds a corrector: once the denoiser has been called at the new point, that
  prediction refines the step just taken (one order higher), and the same call feeds the next step,
  so the corrector costs no extra denoiser calls.

Time grid: uniform in t, the grid DDIM uses, so that "N steps" means the same denoiser times for every
sampler and step counts compare one to one. On the cosine schedule a uniform t grid is close to uniform in
log-SNR over the middle of the range and takes one large first step from t=1 (log-SNR -20, alpha ~ 4.5e-5).
That first step is the first-order update in data prediction, which is well behaved there: x0_hat is
bounded and its weight alpha_s (1 - e^-h) is exact for a constant x0_hat, however large h is. The
multistep corrections start from the second step, where the ratio of step sizes r = h_prev / h only
shrinks the correction (1 / 2r). Grids uniform in log-SNR (from -20 up to +6 or +10), grids t^p (p = 0.8,
1.25, 2) and a second-order last step to t = 0.001 were tried on models of benchmarks/samplers.py: each was
further from the ODE's answer at 20 steps than this one.

Last step: like DDIM, the denoiser's (thresholded) prediction at the last grid time before 0 is returned
(the step to sigma = 0 has h = infinity, where every higher-order term vanishes). That prediction differs
from the ODE's end point by O(sigma^2) at that time, which is O(1 / steps^2) on a uniform t grid.

Convergence (tests/core/test_multistep.py, Gaussian data, where the exact answer is known): with steps
uniform in lambda, DDIM is first order, DPM-Solver++(2M) second and UniPC third. On the cosine schedule's
uniform t grid the steps in lambda near t=1 and t=0 stay about log((i+1)/i) whatever the step count, so
the asymptotic order arrives slowly (DPM-Solver++(2M) measured 1.4 to 1.7 between 64 and 512 steps, UniPC
1.7 to 2.0), but both are far ahead of DDIM at every step count (about 10x closer at 16 steps).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _half_logsnr_and_alpha_sigma(ts: torch.Tensor, logsnr_fn) -> tuple[list[float], list[float], list[float]]:
    """lambda, alpha and sigma at each grid time, as float64 Python numbers (one grid for the whole batch)."""
    logsnr = logsnr_fn(ts).double()
    alpha = torch.sigmoid(logsnr).sqrt()
    sigma = torch.sigmoid(-logsnr).sqrt()
    return (logsnr / 2).tolist(), alpha.tolist(), sigma.tolist()


def _check_eta(eta: float, name: str) -> None:
    if eta not in (0, 0.0, None):
        raise ValueError(f"{name} solves the deterministic probability-flow ODE; eta must be 0, got {eta} "
                         "(use sampler 'ddim' with eta>0 or 'ddpm' for stochastic sampling)")


def _setup(steps, x_T, t_start, logsnr_min, logsnr_max, logsnr_fn, progress, desc):
    # Imported here, not at module level: suti.sampling registers these samplers, so a module-level
    # import would be circular.
    from .sampling import schedule, time_grid

    fn = schedule(logsnr_min, logsnr_max, logsnr_fn)
    ts = time_grid(steps, x_T.device, t_start)
    lam, alpha, sigma = _half_logsnr_and_alpha_sigma(ts, fn)
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=progress if isinstance(progress, str) else desc, leave=False)
    return ts, lam, alpha, sigma, it


def dpmpp_2m_sample(denoise: Denoiser, x_T: torch.Tensor, steps: int = 20, eta: float = 0.0, *,
                    threshold: str | None = "dynamic", percentile: float = 0.995, logsnr_min: float = -20.0,
                    logsnr_max: float = 20.0, generator: torch.Generator | None = None, progress=None,
                    callback: Callable | None = None, t_start: float = 1.0,
                    logsnr_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in data (x0) prediction.

    Arguments as ``ddim_sample``; ``eta`` must be 0 (the sampler is deterministic) and ``generator`` is
    unused. ``logsnr_fn`` replaces the cosine schedule. ``callback(i, x, x0)`` after every step.
    """
    from .sampling import apply_threshold

    _check_eta(eta, "dpmpp_2m")
    ts, lam, alpha, sigma, it = _setup(steps, x_T, t_start, logsnr_min, logsnr_max, logsnr_fn, progress, "dpm++2m")
    x = x_T
    prev_x0, prev_h = None, None
    for i in it:
        x0 = apply_threshold(denoise(x, ts[i].expand(x.shape[0]), i), threshold, percentile)
        if i == steps - 1:
            x = x0  # to sigma = 0: the (thresholded) prediction itself, as DDIM
        else:
            h = lam[i + 1] - lam[i]
            if prev_x0 is None:
                d = x0  # first step: first order (DDIM)
            else:
                r = prev_h / h
                d = x0 + (x0 - prev_x0) / (2.0 * r)
            x = (sigma[i + 1] / sigma[i]) * x + (alpha[i + 1] * -math.expm1(-h)) * d
            prev_x0, prev_h = x0, h
        if callback is not None:
            callback(i, x, x0)
    return x


def _unipc_coefficients(rks: list[float], hh: float, b_h: float) -> list[float]:
    """b_k = k! phi_{k+1}(hh) / B(h) for k = 1..len(rks): the right-hand side of UniPC's order conditions."""
    out, factorial = [], 1.0
    h_phi_k = math.expm1(hh) / hh - 1.0
    for k in range(1, len(rks) + 1):
        out.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return out


def _solve(rks: list[float], b: list[float]) -> list[float]:
    """rho with sum_j rho_j rks_j^(k-1) = b_k, k = 1..n (a small Vandermonde system)."""
    r = torch.tensor([[rk ** k for rk in rks] for k in range(len(rks))], dtype=torch.float64)
    return torch.linalg.solve(r, torch.tensor(b, dtype=torch.float64)).tolist()


def unipc_sample(denoise: Denoiser, x_T: torch.Tensor, steps: int = 20, eta: float = 0.0, *,
                 threshold: str | None = "dynamic", percentile: float = 0.995, logsnr_min: float = -20.0,
                 logsnr_max: float = 20.0, generator: torch.Generator | None = None, progress=None,
                 callback: Callable | None = None, t_start: float = 1.0,
                 logsnr_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 order: int = 2) -> torch.Tensor:
    """UniPC (Zhao et al. 2023), B(h) = e^-h - 1 ("bh2"), data prediction: an ``order``-step predictor
    (order 2 is DPM-Solver++(2M)) followed by the UniC corrector, which raises the order by one at no
    extra denoiser call. Arguments as ``ddim_sample``; ``eta`` must be 0, ``generator`` is unused.
    """
    from .sampling import apply_threshold

    _check_eta(eta, "unipc")
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3, got {order}")
    ts, lam, alpha, sigma, it = _setup(steps, x_T, t_start, logsnr_min, logsnr_max, logsnr_fn, progress, "unipc")
    x = x_T
    history: list[tuple[float, torch.Tensor]] = []  # (lambda, x0) of the points visited, newest last
    x_prev, last_order = None, 0
    for i in it:
        m = apply_threshold(denoise(x, ts[i].expand(x.shape[0]), i), threshold, percentile)
        if x_prev is not None and i < steps - 1:
            # UniC: refine the step just taken (from point i-1 with x_prev) with the prediction at point i.
            # Skipped at the last point, whose prediction is returned as it is.
            x = _unipc_update(x_prev, history, lam[i], alpha[i], sigma[i - 1], sigma[i], last_order, m_new=m)
        history.append((lam[i], m))
        history = history[-order:]
        if i == steps - 1:
            x = m
        else:
            last_order = min(order, len(history))
            x_prev = x
            x = _unipc_update(x, history, lam[i + 1], alpha[i + 1], sigma[i], sigma[i + 1], last_order)
        if callback is not None:
            callback(i, x, m)
    return x


def _unipc_update(x, history, lam_t, alpha_t, sigma_s0, sigma_t, order, m_new=None):
    """One UniPC update from the newest history point s0 to lambda_t, using ``order`` history points.

    Predictor (``m_new`` None): uses the ``order - 1`` older points. Corrector: also uses ``m_new``, the
    prediction at lambda_t, with weights solved from the order conditions.
    """
    lam_s0, m0 = history[-1]
    h = lam_t - lam_s0
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)  # "bh2"
    rks, d1s = [], []
    for j in range(1, order):
        lam_j, m_j = history[-1 - j]
        rk = (lam_j - lam_s0) / h
        rks.append(rk)
        d1s.append((m_j - m0) / rk)
    x_next = (sigma_t / sigma_s0) * x - (alpha_t * h_phi_1) * m0
    if m_new is None:  # predictor
        if not d1s:
            return x_next
        rhos = [0.5] if order == 2 else _solve(rks, _unipc_coefficients(rks + [1.0], hh, b_h)[:-1])
        res = sum(rho * d for rho, d in zip(rhos, d1s))
        return x_next - (alpha_t * b_h) * res
    rks.append(1.0)
    rhos = [0.5] if order == 1 else _solve(rks, _unipc_coefficients(rks, hh, b_h))
    res = sum(rho * d for rho, d in zip(rhos[:-1], d1s)) + rhos[-1] * (m_new - m0)
    return x_next - (alpha_t * b_h) * res
