"""Multistep samplers against the exact solution of the probability-flow ODE.

For Gaussian data x0 ~ N(mu, diag(s^2)) (here s in [0.3, 0.8]) the denoiser is known in closed form,
E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu), and the ODE keeps each
coordinate's standard score z = (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2) constant, so the ODE's end
point from a given x_T is mu + s z exactly. The error of each sampler at N steps is then known, and the
slope of log(error) against log(N) is its order of convergence.
"""
import math

import pytest
import torch

from suti.diffusion import cosine_logsnr
from suti.multistep import dpmpp_2m_sample, unipc_sample
from suti.sampling import Guidance, ddim_sample, guided_denoiser



class GaussianWorld:
    """Per-coordinate Gaussian data with its exact denoiser and exact ODE end point (float64)."""

    def __init__(self, logsnr_fn=None, seed=0, shape=(3, 4, 4)):
        g = torch.Generator().manual_seed(seed)
        self.mu = (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5)
        self.s = 0.3 + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)
        self.logsnr_fn = logsnr_fn or (lambda t: cosine_logsnr(t))
        self.calls = 0

    def alpha_sigma(self, t):
        logsnr = self.logsnr_fn(t).double().reshape(-1, 1, 1, 1)
        return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()

    def denoise(self, x, t, step):
        self.calls += 1
        a, sg = self.alpha_sigma(t)
        return self.mu + a * self.s**2 / (a**2 * self.s**2 + sg**2) * (x - a * self.mu)

    def exact_end(self, x_T, t_start=1.0):
        a, sg = self.alpha_sigma(torch.full((x_T.shape[0],), t_start, dtype=torch.float64))
        z = (x_T - a * self.mu) / (a**2 * self.s**2 + sg**2).sqrt()
        return self.mu + self.s * z  # sigma -> 0 (log-SNR +inf); at log-SNR 20 it differs by ~1e-10

    def x_T(self, n=64, seed=1):
        return torch.randn(n, *self.mu.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rms_errors(sampler, world, steps, **kw):
    x_T = world.x_T()
    exact = world.exact_end(x_T)
    return [float((sampler(world.denoise, x_T, n, threshold=None, **kw) - exact).pow(2).mean().sqrt())
            for n in steps]


def order_of(errors, steps):
    """Least-squares slope of -log(error) against log(steps)."""
    xs = [math.log(n) for n in steps]
    ys = [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


LINEAR = lambda t: 20.0 - 40.0 * t.double()  # noqa: E731  log-SNR linear in t: a uniform t grid is uniform in lambda


# Uniform steps in lambda = logsnr / 2, where the theory's orders hold cleanly. Measured (float64), errors at
# 64 .. 512 steps: DDIM 4.1e-2 .. 5.3e-3 (order 0.98); DPM-Solver++(2M) 3.2e-3 .. 5.2e-5 (order 1.98);
# UniPC 1.3e-3 .. 2.7e-6 (order 2.98). The bounds on the errors leave about 2x.
@pytest.mark.parametrize("sampler,lo,hi,err_first,err_last", [
    (ddim_sample, 0.9, 1.1, 0.08, 0.01),
    (dpmpp_2m_sample, 1.85, 2.15, 6e-3, 1e-4),
    (unipc_sample, 2.8, 3.2, 2.5e-3, 5e-6),
])
def test_order_of_convergence_uniform_in_logsnr(sampler, lo, hi, err_first, err_last):
    steps = (64, 128, 256, 512)
    errors = rms_errors(sampler, GaussianWorld(logsnr_fn=LINEAR), steps=steps, logsnr_fn=LINEAR)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert lo < order_of(errors, steps) < hi, errors
    assert errors[0] < err_first and errors[-1] < err_last, errors


# The cosine schedule on the uniform t grid every sampler uses: near t=1 and t=0 the steps in lambda stay
# about log((i+1)/i) whatever the step count, so the second-order samplers reach their order only slowly
# (global error ~ log(N) / N^2). Measured errors at 16 / 64 / 256 / 512 steps: DDIM 4.8e-2 / 1.2e-2 / 3.1e-3 /
# 1.6e-3 (local order 1.0); DPM-Solver++(2M) 4.1e-3 / 1.4e-3 / 1.8e-4 / 5.4e-5 (order 1.4 -> 1.7 from 64 to
# 512 steps); UniPC 4.0e-3 / 6.3e-4 / 5.2e-5 / 1.3e-5 (1.7 -> 2.0).
@pytest.mark.parametrize("sampler,lo,hi,err16,err512", [
    (ddim_sample, 0.9, 1.1, 0.1, 3e-3),
    (dpmpp_2m_sample, 1.45, 2.2, 0.01, 1.2e-4),
    (unipc_sample, 1.7, 2.4, 0.01, 3e-5),
])
def test_order_of_convergence_on_the_cosine_schedule(sampler, lo, hi, err16, err512):
    steps = (64, 128, 256, 512)
    world = GaussianWorld()
    errors = rms_errors(sampler, world, steps=(16,) + steps)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert lo < order_of(errors[1:], steps) < hi, errors
    assert errors[0] < err16 and errors[-1] < err512, errors


def test_second_order_beats_ddim_at_every_step_count():
    world = GaussianWorld(seed=3)
    steps = (8, 16, 32, 64)
    ddim, dpm, uni = (rms_errors(s, world, steps=steps) for s in (ddim_sample, dpmpp_2m_sample, unipc_sample))
    for n, a, b, c in zip(steps, ddim, dpm, uni):
        assert b < a / 2 and c < b, (n, a, b, c)
    # The goal, on this problem: DPM-Solver++ at 16 steps is closer to the ODE's answer than DDIM at 64.
    assert dpm[1] < ddim[3]


@pytest.mark.parametrize("sampler", [dpmpp_2m_sample, unipc_sample])
def test_logsnr_fn_is_used(sampler):
    """Walking the cosine schedule instead of the world's own (ignoring logsnr_fn) misses its answer."""
    world = GaussianWorld(logsnr_fn=LINEAR)
    right = rms_errors(sampler, world, steps=(64,), logsnr_fn=LINEAR)[0]
    wrong = rms_errors(sampler, world, steps=(64,))[0]
    assert right < 5e-3 and wrong > 50 * right, (right, wrong)  # measured 3.2e-3 vs 0.28 (DPM-Solver++)


@pytest.mark.parametrize("sampler", [dpmpp_2m_sample, unipc_sample])
def test_one_call_per_step_and_step_indices(sampler):
    world = GaussianWorld()
    seen = []

    def den(x, t, step):
        seen.append((step, float(t[0])))
        assert t.shape == (x.shape[0],)
        return world.denoise(x, t, step)

    sampler(den, world.x_T(4), 7, threshold=None)
    assert [s for s, _ in seen] == list(range(7))
    assert [t for _, t in seen] == pytest.approx([1 - i / 7 for i in range(7)])


@pytest.mark.parametrize("sampler", [dpmpp_2m_sample, unipc_sample])
def test_oracle_denoiser_lands_on_target_with_one_step_and_many(sampler):
    x0 = torch.rand(1, 3, 4, 4) * 1.6 - 0.8
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for steps in (1, 2, 9):
        out = sampler(lambda x, t, i: x0.expand_as(x), x_T, steps)
        assert out.dtype == x_T.dtype and out.shape == x_T.shape
        assert torch.allclose(out, x0.expand_as(out), atol=1e-5)


@pytest.mark.parametrize("sampler", [dpmpp_2m_sample, unipc_sample])
def test_dynamic_threshold_applied_to_every_prediction(sampler):
    """A denoiser that overshoots: every prediction the sampler uses (seen through the callback) and the
    output are thresholded, as in DDIM."""
    world = GaussianWorld()
    preds = []
    out = sampler(lambda x, t, i: 4.0 * world.denoise(x, t, i).float() + 1.0, world.x_T(4).float(), 6,
                  threshold="dynamic", callback=lambda i, x, x0: preds.append(x0))
    assert len(preds) == 6
    assert all(float(p.abs().max()) <= 1.0 + 1e-6 for p in preds)
    assert float(out.abs().max()) <= 1.0 + 1e-6
    unthresholded = sampler(lambda x, t, i: 4.0 * world.denoise(x, t, i).float() + 1.0, world.x_T(4).float(), 6,
                            threshold=None)
    assert float(unthresholded.abs().max()) > 2.0


@pytest.mark.parametrize("mode", ["text", "context", "joint", "interleaved"])
@pytest.mark.parametrize("sampler", [dpmpp_2m_sample, unipc_sample])
def test_every_guidance_mode(sampler, mode):
    """Guided denoisers from suti.sampling: the branch each step compares against follows the step index."""
    world = GaussianWorld()
    offsets = {"full": 0.0, "no_text": -0.3, "no_context": 0.2, "uncond": 0.5}
    refs = []

    def branches(x, t, names):
        refs.append(names[1:])
        return [world.denoise(x, t, 0) + offsets[n] for n in names]

    guidance = Guidance(scale=3.0, mode=mode, text_ratio=0.5)
    den = guided_denoiser(branches, guidance, has_context=True)
    out = sampler(den, world.x_T(4), 6, threshold=None)
    expected = [[guidance.plan(i, True)[0]] for i in range(6)]
    assert refs == expected
    if mode == "interleaved":
        assert {r[0] for r in refs} == {"no_text", "no_context"}
    # The guided run differs from the unguided one by what the branches' offsets imply, step by step.
    plain = sampler(lambda x, t, i: world.denoise(x, t, 0), world.x_T(4), 6, threshold=None)
    shifted = sampler(lambda x, t, i: world.denoise(x, t, 0) + (1 - 3.0) * offsets[guidance.plan(i, True)[0]],
                      world.x_T(4), 6, threshold=None)
    assert torch.allclose(out, shifted, atol=1e-9) and not torch.allclose(out, plain, atol=0.1)


@pytest.mark.parametrize("sampler", [dpmpp_2m_sample, unipc_sample])
def test_start_part_way(sampler):
    """t_start < 1 (image-to-image): the exact ODE end point from x at that time."""
    world = GaussianWorld()
    x_t = world.x_T(16) * 0.7
    exact = world.exact_end(x_t, t_start=0.6)

    def err(fn, n):
        return float((fn(world.denoise, x_t, n, threshold=None, t_start=0.6) - exact).pow(2).mean().sqrt())

    errs = [err(sampler, n) for n in (8, 32, 128)]
    # Measured at 8 / 32 / 128 steps: DPM-Solver++(2M) 7.2e-3, 1.7e-3, 2.2e-4; UniPC 6.5e-3, 7.0e-4, 6.4e-5;
    # DDIM 4.2e-2, 1.1e-2, 2.7e-3.
    assert errs[0] > errs[1] > errs[2] and errs[2] < errs[1] / 5 and errs[2] < 5e-4, errs
    assert errs[1] < err(ddim_sample, 32) / 5


@pytest.mark.parametrize("sampler", [dpmpp_2m_sample, unipc_sample])
def test_bad_arguments(sampler):
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="eta"):
        sampler(lambda x, t, i: x, x, 4, eta=1.0)
    with pytest.raises(ValueError, match="steps"):
        sampler(lambda x, t, i: x, x, 0)
    with pytest.raises(ValueError, match="threshold"):
        sampler(lambda x, t, i: x, x, 2, threshold="soft")


def test_unipc_order_argument():
    steps = (64, 128, 256, 512)
    world = GaussianWorld(logsnr_fn=LINEAR)
    orders = {k: order_of(rms_errors(unipc_sample, world, steps, logsnr_fn=LINEAR, order=k), steps) for k in (1, 3)}
    # UniC raises the predictor's order by one: measured 1.99 on a first-order predictor and 3.4 (on its way
    # to 4) on a third-order one.
    assert 1.85 < orders[1] < 2.15 and orders[3] > 3.2, orders
    with pytest.raises(ValueError, match="order"):
        unipc_sample(world.denoise, world.x_T(1), 4, order=4)


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc"])
def test_registered_and_sampling_a_suti_stage_in_every_guidance_mode(name):
    """Through Stage.sample by name: a SuTI stage with exemplars, each guidance mode, dynamic thresholding."""
    from suti.cascade import Stage, convert_to_context_stage
    from suti.context import Exemplars
    from suti.presets import preset
    from suti.sampling import SAMPLERS

    assert name in SAMPLERS
    torch.manual_seed(0)
    t2i = Stage(preset("tiny-base32", text_embed_dim=16))
    torch.nn.init.normal_(t2i.unet.out[-1].weight, std=0.05)  # a zero output layer would hide bugs
    st, _ = convert_to_context_stage(t2i)
    for pname, p in st.unet.named_parameters():  # as if the context layers were trained
        if "context_attn.out" in pname:
            torch.nn.init.normal_(p, std=0.2)
    st.eval()
    g = torch.Generator().manual_seed(0)
    ex = Exemplars(torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1, torch.randn(2, 3, 4, 16, generator=g),
                   torch.ones(2, 3, 4, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool))
    te, tm = torch.randn(2, 4, 16, generator=g), torch.ones(2, 4, dtype=torch.bool)
    x_T = torch.randn(2, 3, 32, 32, generator=g)
    outs = {}
    for mode in ("text", "context", "joint", "interleaved"):
        run = lambda: st.sample(te, tm, exemplars=ex, guidance=Guidance(scale=4.0, mode=mode), steps=4,  # noqa: E731
                                sampler=name, noise=x_T)
        outs[mode] = run()
        assert outs[mode].shape == x_T.shape and torch.isfinite(outs[mode]).all()
        assert float(outs[mode].abs().max()) <= 1.0 + 1e-5  # dynamically thresholded
        assert torch.equal(outs[mode], run())  # deterministic from the same noise
    modes = list(outs)
    for i, a in enumerate(modes):
        for b in modes[i + 1:]:
            assert not torch.allclose(outs[a], outs[b], atol=1e-4), (a, b)  # each mode guides differently
