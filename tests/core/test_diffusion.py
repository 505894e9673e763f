import math

import pytest
import torch

from suti import diffusion as D
from suti.config import DiffusionConfig


def test_cosine_schedule_endpoints_and_monotone():
    t = torch.linspace(0, 1, 101)
    l = D.cosine_logsnr(t, -20, 20)
    assert abs(float(l[0]) - 20) < 1e-4 and abs(float(l[-1]) + 20) < 1e-4
    assert (l[1:] < l[:-1]).all()
    # logsnr(0.5) of the symmetric cosine schedule is 0 (alpha = sigma)
    assert abs(float(D.cosine_logsnr(torch.tensor([0.5]), -20, 20))) < 1e-3


def test_variance_preserving_identity():
    l = torch.linspace(-15, 15, 31)
    a, s = D.alpha_sigma(l)
    assert torch.allclose(a**2 + s**2, torch.ones_like(l), atol=1e-6)
    assert torch.allclose(torch.log(a**2 / s**2), l, atol=1e-4)


def test_eps_v_round_trips():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=g)
    l = torch.tensor([-6.0, -1.0, 2.0, 8.0])
    xt = D.q_sample(x0, l, eps)
    v = D.v_from_eps_x0(eps, x0, l)
    assert torch.allclose(D.x0_from_v(xt, v, l), x0, atol=1e-5)
    assert torch.allclose(D.eps_from_v(xt, v, l), eps, atol=1e-5)
    assert torch.allclose(D.x0_from_eps(xt, eps, l), x0, atol=1e-4)
    assert torch.allclose(D.eps_from_x0(xt, x0, l), eps, atol=1e-4)
    assert torch.allclose(D.x0_from_output(v, xt, l, "v"), x0, atol=1e-5)
    assert torch.allclose(D.x0_from_output(eps, xt, l, "eps"), x0, atol=1e-4)


def test_loss_zero_for_perfect_prediction():
    cfg = DiffusionConfig(prediction="v")
    x0, eps, l = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([0.0, 3.0])
    assert float(D.diffusion_loss(D.v_from_eps_x0(eps, x0, l), x0, eps, l, cfg)) < 1e-10
    cfg = DiffusionConfig(prediction="eps")
    assert float(D.diffusion_loss(eps, x0, eps, l, cfg)) == 0.0


def test_noise_aug_train_random_sample_fixed():
    cfg = DiffusionConfig(noise_aug_max=0.4, noise_aug_sample=0.25)
    tr = D.sample_aug_level(1000, cfg, "cpu", train=True, generator=torch.Generator().manual_seed(0))
    assert 0 <= float(tr.min()) and float(tr.max()) <= 0.4 and float(tr.std()) > 0.05
    fixed = D.sample_aug_level(7, cfg, "cpu", train=False)
    assert torch.all(fixed == 0.25)
    low = torch.zeros(1, 3, 4, 4)
    # level 0 leaves the image (almost) clean; level 1 is (almost) pure noise
    assert D.noise_augment(low, torch.zeros(1), cfg).abs().max() < 1e-3


def test_drop_masks_rates():
    cfg = DiffusionConfig(text_drop_prob=0.1, context_drop_prob=0.15, joint_drop_prob=0.05)
    kt, kc = D.drop_masks(100000, cfg, "cpu", generator=torch.Generator().manual_seed(0))
    assert math.isclose(float((~kt & kc).float().mean()), 0.1, abs_tol=0.01)  # text alone: "no_text"
    assert math.isclose(float((kt & ~kc).float().mean()), 0.15, abs_tol=0.01)  # context alone: "no_context"
    assert math.isclose(float((~kt & ~kc).float().mean()), 0.05, abs_tol=0.01)  # both: "uncond"
    assert math.isclose(float((kt & kc).float().mean()), 0.7, abs_tol=0.01)
    # without context only text is dropped, at text_drop_prob (Imagen's CFG dropout)
    kt, kc = D.drop_masks(100000, cfg, "cpu", generator=torch.Generator().manual_seed(0), has_context=False)
    assert math.isclose(float((~kt).float().mean()), 0.1, abs_tol=0.01) and bool(kc.all())


@pytest.mark.parametrize("mode", ["text", "context", "joint", "interleaved"])
@pytest.mark.parametrize("has_context", [True, False])
def test_every_branch_guidance_uses_is_trained(mode, has_context):
    from suti.sampling import Guidance

    cfg = DiffusionConfig()  # the defaults every preset uses
    used = Guidance(scale=3.0, context_scale=2.0, mode=mode).branches_used(50, has_context)
    assert used and used <= D.trained_branches(cfg, has_context), (mode, used, D.trained_branches(cfg, has_context))


def test_drop_probabilities_must_fit_in_one_row():
    with pytest.raises(ValueError, match="exceeds 1"):
        DiffusionConfig(text_drop_prob=0.5, context_drop_prob=0.4, joint_drop_prob=0.2)
