import pytest
import torch

from suti.cascade import Stage
from suti.presets import preset
from suti.sampling import Guidance, apply_threshold, ddim_sample, ddpm_sample, dynamic_threshold


def test_dynamic_threshold_hand_computed():
    # 1000 values: 0.001 .. 1.0 then one sample scaled to max 3.0. quantile(|x|, .995) by linear interpolation.
    base = torch.arange(1, 1001, dtype=torch.float32) / 1000.0
    x = torch.stack([base, base * 3.0]).reshape(2, 1, 10, 100)
    out = dynamic_threshold(x, 0.995)
    # sample 1: s = max(1, q) with q = 0.995 * 999 interpolation -> 0.99501 <1 -> s=1: unchanged
    assert torch.allclose(out[0], x[0])
    # sample 2: q = 3 * 0.995005 = 2.985015; values clipped to [-q, q] then / q
    q = 3.0 * (1 + 0.995 * 999) / 1000.0
    expect = torch.clamp(x[1], -q, q) / q
    assert torch.allclose(out[1], expect, atol=1e-6)
    assert float(out[1].max()) == pytest.approx(1.0)
    assert torch.equal(apply_threshold(x, "static"), x.clamp(-1, 1))


class Oracle:
    """A denoiser that knows the answer: checks the sampler lands on x0."""

    def __init__(self, x0):
        self.x0 = x0
        self.calls = 0

    def __call__(self, x, t, step):
        self.calls += 1
        return self.x0.expand_as(x)


@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample])
def test_samplers_reach_target_and_count_steps(sampler):
    x0 = torch.rand(1, 3, 4, 4) * 1.6 - 0.8
    den = Oracle(x0)
    out = sampler(den, torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)), steps=7,
                  generator=torch.Generator().manual_seed(1))
    assert den.calls == 7
    assert torch.allclose(out, x0.expand_as(out), atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_every_step_stays_on_the_forward_marginal(eta):
    """With the true x0 as the prediction, x_t after every step is alpha_t x0 + sigma_t eps with eps exactly
    the starting noise (DDIM, eta=0) or eps ~ N(0, I) (DDPM posterior variance, eta=1). Unlike reaching
    the target, this catches a wrong update or variance at any intermediate step."""
    from suti.diffusion import alpha_sigma, cosine_logsnr
    from suti.sampling import time_grid

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 32, 32, generator=g) * 1.6 - 0.8
    eps = torch.randn(x0.shape, generator=g)
    steps, ts = 6, time_grid(6)
    a1, s1 = alpha_sigma(cosine_logsnr(ts[:1]))
    x_T = a1 * x0 + s1 * eps
    implied = []

    def check(i, x, _):
        if i < steps - 1:
            a, s = alpha_sigma(cosine_logsnr(ts[i + 1:i + 2]))
            implied.append((x - a * x0) / s)

    ddim_sample(lambda x, t, step: x0, x_T, steps=steps, eta=eta, threshold="none",
                generator=torch.Generator().manual_seed(1), callback=check)
    assert len(implied) == steps - 1
    corr = lambda a, b: float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])  # noqa: E731
    logsnr = cosine_logsnr(ts)
    for i, e in enumerate(implied):
        if eta == 0.0:
            assert torch.allclose(e, eps, atol=1e-4)
        else:
            assert abs(float(e.std()) - 1.0) < 0.03 and abs(float(e.mean())) < 0.03
            # DDPM posterior q(x_s | x_t, x0): the noise carried over from t has weight sqrt(SNR_t / SNR_s),
            # the rest is fresh, so consecutive implied noises correlate by exactly that.
            prev = eps if i == 0 else implied[i - 1]  # the implied noise at ts[i]
            expect = float(torch.exp((logsnr[i] - logsnr[i + 1]) / 2))
            assert abs(corr(prev, e) - expect) < 0.03, (i, corr(prev, e), expect)


def _stage():
    torch.manual_seed(0)
    st = Stage(preset("tiny-base32", text_embed_dim=16)).eval()
    torch.nn.init.normal_(st.unet.out[-1].weight, std=0.02)  # an "untrained" zero output would hide bugs
    return st


def test_ddim_eta0_deterministic_and_seeds_reproduce():
    st = _stage()
    te, tm = torch.randn(2, 4, 16), torch.ones(2, 4, dtype=torch.bool)
    a = st.sample(te, tm, steps=3, generator=torch.Generator().manual_seed(5))
    b = st.sample(te, tm, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # eta=0: given the same x_T, no randomness is drawn during sampling
    x_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    c = st.sample(te, tm, steps=3, noise=x_T, generator=torch.Generator().manual_seed(1))
    d = st.sample(te, tm, steps=3, noise=x_T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(c, d)
    # ddpm draws noise per step: different generator seeds differ
    e = st.sample(te, tm, steps=3, noise=x_T, sampler="ddpm", generator=torch.Generator().manual_seed(1))
    f = st.sample(te, tm, steps=3, noise=x_T, sampler="ddpm", generator=torch.Generator().manual_seed(2))
    assert not torch.equal(e, f)


def test_guidance_plans():
    g = Guidance(scale=4.0, mode="interleaved", text_ratio=0.25)
    refs = [g.plan(i, True)[0] for i in range(8)]
    assert refs.count("no_text") == 2 and refs.count("no_context") == 6
    assert Guidance(mode="text").plan(0, True)[0] == "no_text"
    assert Guidance(mode="context").plan(0, True)[0] == "no_context"
    assert Guidance(mode="joint").plan(0, True)[0] == "uncond"
    assert Guidance(mode="text").plan(0, False)[0] == "uncond"  # plain CFG without exemplars
    assert Guidance(scale=1.0).plan(0, True)[0] is None
    assert Guidance(mode="text", scale=1.0, context_scale=3.0).plan(0, True)[0] is None


def test_context_guidance_applies_when_text_scale_is_one():
    """`--guidance 1 --context-guidance 3`: the context-guided steps are guided, the text-guided ones not."""
    g = Guidance(scale=1.0, context_scale=3.0, mode="context")
    assert g.plan(0, True) == ("no_context", 3.0)
    g = Guidance(scale=1.0, context_scale=3.0, mode="interleaved", text_ratio=0.5)
    plans = [g.plan(i, True) for i in range(4)]
    assert plans.count(("no_context", 3.0)) == 2 and plans.count((None, 1.0)) == 2
    assert Guidance(scale=1.0, context_scale=3.0, mode="context").plan(0, False) == (None, 1.0)  # no exemplars
    with pytest.raises(ValueError):
        Guidance(mode="bogus")


def test_guidance_scale_changes_output():
    st = _stage()
    te, tm = torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.bool)
    x_T = torch.randn(1, 3, 32, 32)
    a = st.sample(te, tm, steps=2, noise=x_T, guidance=Guidance(scale=1.0), threshold="none")
    b = st.sample(te, tm, steps=2, noise=x_T, guidance=Guidance(scale=8.0), threshold="none")
    assert not torch.allclose(a, b)


def test_cascade_callback_reports_every_step_and_can_stop_sampling():
    from suti.cascade import Cascade

    cascade = Cascade([_stage()])
    te, tm = torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.bool)
    seen = []
    cascade.sample(te, tm, steps=3, callback=lambda name, step, steps: seen.append((name, step, steps)))
    name = cascade.names[0]
    assert seen == [(name, 0, 3), (name, 1, 3), (name, 2, 3)]

    class Stop(Exception):
        pass

    def stop(name, step, steps):
        raise Stop

    with pytest.raises(Stop):
        cascade.sample(te, tm, steps=3, callback=stop)


def test_eps_stage_starts_where_its_x0_estimate_is_well_conditioned():
    from suti import diffusion as D
    from suti.config import DiffusionConfig

    v, eps = DiffusionConfig(prediction="v"), DiffusionConfig(prediction="eps")
    assert v.sampling_logsnr_min == -20.0 and eps.sampling_logsnr_min == -5.0
    t = D.cosine_t_from_logsnr(-5.0)
    assert abs(float(D.cosine_logsnr(torch.tensor([t]))) + 5.0) < 1e-3
    assert DiffusionConfig(prediction="eps", sample_logsnr_min=-15.0).sampling_logsnr_min == -15.0


def test_cli_offers_every_sampler():
    from suti.cli import SAMPLER_NAMES
    from suti.sampling import SAMPLERS

    assert tuple(SAMPLERS) == SAMPLER_NAMES
