"""Guidance learning test: the prompt and the exemplars each decide something different.

The exemplars show a subject (a block of one colour); the prompt says where the target puts it ("on the
left" / "on the right"). The target is the exemplars' colour at the prompt's side, so the model must read the
colour from the exemplars and the position from the text: not a copy task. As with web photos, copying is
tempting: in training the exemplars sit on the target's side 80% of the time. At test time every exemplar
sits on the other side, so copying the exemplars and following the prompt disagree.

A tiny SuTI stage is trained with the default drop scheme (text alone, context alone and both dropped), then
sampled on held-out colours in every guidance mode. Asserted with margins:
- text guidance improves text fidelity (the block on the prompt's side) over no guidance;
- context guidance improves subject fidelity (the block in the exemplars' colour) over no guidance;
- interleaved guidance holds both.
"""
import pytest
import torch

from suti.cascade import Stage
from suti.config import DiffusionConfig, StageConfig, UNetConfig
from suti.context import Exemplars
from suti.sampling import Guidance

SIZE, K, BG = 16, 3, -0.9
HELD_OUT = torch.tensor([[0.6, -0.4, -0.4], [-0.4, 0.5, -0.3], [-0.3, -0.4, 0.6],
                         [0.5, 0.5, -0.5], [-0.5, 0.4, 0.5], [0.1, -0.5, 0.3]])
ROWS, LEFT, RIGHT = slice(3, 13), slice(1, 7), slice(9, 15)


def _stage(text_dim, prediction="v"):
    cfg = StageConfig(name="base", unet=UNetConfig(
        image_size=SIZE, base_channels=32, channel_mults=(1, 2), num_res_blocks=(1, 1), self_attention=(False, True),
        cross_attention=(False, True), context_attention=(False, True), middle_context_attention=True,
        text_embed_dim=text_dim, head_dim=32), diffusion=DiffusionConfig(prediction=prediction))
    return Stage(cfg)


def _train_colours(n, g):
    """Uniform colours at least 0.2 (L-inf) from every held-out colour and 0.4 from the background."""
    out = []
    while len(out) < n:
        c = torch.rand(n, 3, generator=g) * 2 - 1
        far = (c[:, None] - HELD_OUT[None]).abs().amax(-1).min(1).values > 0.2
        far &= (c - BG).abs().amax(-1) > 0.4
        out.extend(c[far])
    return torch.stack(out[:n])


def _draw(colours, right):
    """Blocks of ``colours`` (N,3) on the right (True) or left half of a background image."""
    img = torch.full((len(colours), 3, SIZE, SIZE), BG)
    for i, (c, r) in enumerate(zip(colours, right)):
        img[i, :, ROWS, RIGHT if r else LEFT] = c[:, None, None]
    return img


def _batch(colours, right, texts, g, agree: float = 0.8):
    """Targets at the prompt's side; each row's K exemplars on the target's side with probability ``agree``,
    else on the other side; a little noise."""
    n = len(colours)
    (l_emb, l_mask), (r_emb, r_mask), (ex_emb, ex_mask) = texts
    target = _draw(colours, right)
    ex_side = torch.where(torch.rand(n, generator=g) < agree, right, ~right).repeat_interleave(K, 0)
    ex = _draw(colours.repeat_interleave(K, 0), ex_side).reshape(n, K, 3, SIZE, SIZE)
    ex = (ex + 0.05 * torch.randn(ex.shape, generator=g)).clamp(-1, 1)
    emb = torch.where(right[:, None, None], r_emb, l_emb)
    mask = torch.where(right[:, None], r_mask, l_mask)
    exemplars = Exemplars(ex, ex_emb[None].expand(n, K, -1, -1), ex_mask[None].expand(n, K, -1),
                          torch.ones(n, K, dtype=torch.bool))
    return target, emb, mask, exemplars


def _fidelity(images, right):
    """Text fidelity: how much more the prompt's side shows the subject than the other side. Each half's
    projection onto the subject's colour (1: the block, 0: background) is taken; the text margin is the own
    side's minus the other side's, and ``right_side`` the share of samples where it is positive.
    Subject fidelity: the colour of the prompt's side against the held-out colour (L1 error), and that error
    over the mean error to the other held-out colours (chance: drawing another subject)."""
    n = len(HELD_OUT)
    colours = HELD_OUT.repeat(len(images) // n, 1)
    direction = colours - BG
    l_mean, r_mean = images[:, :, ROWS, LEFT].mean((2, 3)), images[:, :, ROWS, RIGHT].mean((2, 3))
    proj = lambda m: ((m - BG) * direction).sum(1) / (direction ** 2).sum(1)  # noqa: E731
    margin = torch.where(right, proj(r_mean) - proj(l_mean), proj(l_mean) - proj(r_mean))
    region = torch.where(right[:, None], r_mean, l_mean)
    err = (region - colours).abs().mean(1)
    others = (region[:, None] - HELD_OUT[None]).abs().mean(-1)  # (N, n)
    own = torch.arange(len(images)) % n
    chance = (others.sum(1) - others[torch.arange(len(images)), own]) / (n - 1)
    return {"text_margin": float(margin.mean()), "right_side": float((margin > 0).float().mean()),
            "colour_err": float(err.mean()), "colour_vs_chance": float(err.mean() / chance.mean())}


def _train(tiny_text_encoder, steps, prediction="v", seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    enc = tiny_text_encoder.encode
    texts = [enc(["a photo of the object on the left"]), enc(["a photo of the object on the right"]),
             enc(["a photo of the object"])]
    texts = [(e[0], m[0]) for e, m in texts]
    stage = _stage(tiny_text_encoder.dim, prediction)
    opt = torch.optim.AdamW(stage.parameters(), lr=2e-3)
    losses, batch = [], 24
    for _ in range(steps):
        right = torch.rand(batch, generator=g) < 0.5
        target, emb, mask, ex = _batch(_train_colours(batch, g), right, texts, g)
        loss = stage.training_loss(target, emb, mask, exemplars=ex, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return stage.eval(), texts, losses


def _sample_modes(stage, texts, modes, threshold="dynamic", steps=10):
    n = len(HELD_OUT)
    right = torch.arange(2 * n) >= n  # each held-out colour once on each side
    # exemplars on the other side: following the prompt and copying the exemplars disagree
    _, emb, mask, ex = _batch(HELD_OUT.repeat(2, 1), right, texts, torch.Generator().manual_seed(1), agree=0.0)
    out = {}
    for mode, scale in modes:
        images = stage.sample(emb, mask, exemplars=ex, guidance=Guidance(scale=scale, mode=mode), steps=steps,
                              threshold=threshold, generator=torch.Generator().manual_seed(2))
        out[mode] = _fidelity(images, right)
        out[mode]["max_abs"] = float(images.abs().max())
    return out


MODES = [("none", 1.0), ("text", 2.0), ("context", 2.0), ("joint", 2.0), ("interleaved", 2.0)]


def test_every_guidance_mode_does_its_job(tiny_text_encoder):
    stage, texts, losses = _train(tiny_text_encoder, steps=300)
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    res = _sample_modes(stage, texts, MODES)
    print(f"\nguidance learning: loss {first:.3f} -> {last:.3f}")
    for mode, r in res.items():
        print(f"  {mode:12s} text: margin {r['text_margin']:.3f}, right side {r['right_side']:.0%}; "
              f"subject: colour error {r['colour_err']:.3f} ({r['colour_vs_chance']:.2f} of chance)")
    assert last < 0.5 * first, (first, last)
    none, text, ctx, inter = res["none"], res["text"], res["context"], res["interleaved"]
    # text guidance improves text fidelity over no guidance
    assert text["text_margin"] > 1.1 * none["text_margin"] and text["right_side"] >= 0.9, res
    # context guidance improves subject fidelity over no guidance (a lower colour error)
    assert ctx["colour_err"] < 0.8 * none["colour_err"], res
    # interleaved holds both
    assert inter["text_margin"] > 1.05 * none["text_margin"] and inter["right_side"] >= 0.9, res
    assert inter["colour_err"] < 0.8 * none["colour_err"], res
    # every guided mode draws the held-out subject, not another one
    for mode in ("text", "context", "joint", "interleaved"):
        assert res[mode]["colour_vs_chance"] < 0.5, (mode, res[mode])


@pytest.mark.slow
def test_eps_prediction_samples_correctly(tiny_text_encoder):
    """eps-prediction trains and samples: without thresholding the first step does not explode."""
    stage, texts, losses = _train(tiny_text_encoder, steps=300, prediction="eps")
    res = _sample_modes(stage, texts, [("none", 1.0), ("interleaved", 3.0)], threshold="none")
    print(f"\neps: loss {sum(losses[:30]) / 30:.3f} -> {sum(losses[-30:]) / 30:.3f}; {res}")
    for mode, r in res.items():
        assert r["max_abs"] < 1.5, (mode, r)
        assert r["right_side"] >= 0.9 and r["colour_vs_chance"] < 0.5, (mode, r)
