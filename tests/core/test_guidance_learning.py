"""Guidance learning test: the prompt and the exemplars each decide something different.

The exemplars show a subject (a block of one colour); the prompt says where the target puts it ("on the
left" / "on the right"). The target is the exemplars' colour at the prompt's side, so the model must read
the colour from the exemplars and the position from the text: not a copy task.

As on the web, both conditions are noisy in training: a quarter of the targets sit on the side the prompt
does not name (wrong alt text), and a quarter show another subject's colour (an impure cluster). The
conditional model then draws the named side, and the exemplars' colour, about three times in four;
guidance is what should make it follow its conditions. A tiny SuTI stage is trained with the default drop
scheme (text alone, context alone and both dropped) and sampled on held-out colours in every guidance
mode. Asserted with margins:
- text guidance improves text fidelity (the share of samples on the named side) over no guidance;
- context guidance improves subject fidelity (the share whose colour is nearest its own exemplars' colour);
- interleaved guidance holds both.
"""
import torch
from colour_subjects import HELD_OUT, train_colours

from suti.cascade import Stage
from suti.config import DiffusionConfig, StageConfig, UNetConfig
from suti.context import Exemplars
from suti.sampling import Guidance

SIZE, K, BG = 16, 3, -0.9
ROWS, LEFT, RIGHT = slice(3, 13), slice(1, 7), slice(9, 15)


def _stage(text_dim, prediction="v"):
    cfg = StageConfig(name="base", unet=UNetConfig(
        image_size=SIZE, base_channels=32, channel_mults=(1, 2), num_res_blocks=(1, 1), self_attention=(False, True),
        cross_attention=(False, True), context_attention=(False, True), middle_context_attention=True,
        text_embed_dim=text_dim, head_dim=32), diffusion=DiffusionConfig(prediction=prediction))
    return Stage(cfg)


def _train_colours(n, g):
    return train_colours(n, g, avoid=BG)


def _draw(colours, right):
    """Blocks of ``colours`` (N,3) on the right (True) or left half of a background image."""
    img = torch.full((len(colours), 3, SIZE, SIZE), BG)
    for i, (c, r) in enumerate(zip(colours, right)):
        img[i, :, ROWS, RIGHT if r else LEFT] = c[:, None, None]
    return img


def _batch(colours, right, texts, g, noise: float = 0.25):
    """Targets at the prompt's side in the exemplars' colour, each wrong with probability ``noise`` in
    training (the other side; another colour); K exemplars each at a random side, with a little noise."""
    n = len(colours)
    (l_emb, l_mask), (r_emb, r_mask), (ex_emb, ex_mask) = texts
    target_right = torch.where(torch.rand(n, generator=g) < noise, ~right, right)
    target_colours = torch.where((torch.rand(n, generator=g) < noise)[:, None], _train_colours(n, g), colours)
    target = _draw(target_colours, target_right)
    ex_side = torch.rand(n * K, generator=g) < 0.5
    ex = _draw(colours.repeat_interleave(K, 0), ex_side).reshape(n, K, 3, SIZE, SIZE)
    ex = (ex + 0.05 * torch.randn(ex.shape, generator=g)).clamp(-1, 1)
    emb = torch.where(right[:, None, None], r_emb, l_emb)
    mask = torch.where(right[:, None], r_mask, l_mask)
    exemplars = Exemplars(ex, ex_emb[None].expand(n, K, -1, -1), ex_mask[None].expand(n, K, -1),
                          torch.ones(n, K, dtype=torch.bool))
    return target, emb, mask, exemplars


def _fidelity(images, right, colours):
    """Text fidelity: the share of samples whose block is on the prompt's side (the half that looks more
    like the subject's colour, by projection onto colour - background). Subject fidelity: the share whose
    block colour is nearest its own held-out colour among all held-out colours, and the L1 colour error."""
    direction = colours - BG
    l_mean, r_mean = images[:, :, ROWS, LEFT].mean((2, 3)), images[:, :, ROWS, RIGHT].mean((2, 3))
    proj = lambda m: ((m - BG) * direction).sum(1) / (direction ** 2).sum(1)  # noqa: E731
    margin = torch.where(right, proj(r_mean) - proj(l_mean), proj(l_mean) - proj(r_mean))
    drawn_right = proj(r_mean) > proj(l_mean)
    region = torch.where(drawn_right[:, None], r_mean, l_mean)  # the block, wherever it was drawn
    dists = (region[:, None] - HELD_OUT[None]).abs().mean(-1)
    own = (colours[:, None] == HELD_OUT[None]).all(-1).float().argmax(1)
    return {"right_side": float((margin > 0).float().mean()),
            "own_colour": float((dists.argmin(1) == own).float().mean()),
            "colour_err": float(dists[torch.arange(len(images)), own].mean())}


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


def _sample_modes(stage, texts, modes, threshold="dynamic", steps=10, seeds=3):
    n = len(HELD_OUT)
    colours = HELD_OUT.repeat(2 * seeds, 1)
    right = (torch.arange(len(colours)) // n) % 2 == 1  # each held-out colour on each side, `seeds` times
    _, emb, mask, ex = _batch(colours, right, texts, torch.Generator().manual_seed(1), noise=0.0)
    out = {}
    for mode, scale in modes:
        images = stage.sample(emb, mask, exemplars=ex, guidance=Guidance(scale=scale, mode=mode), steps=steps,
                              threshold=threshold, generator=torch.Generator().manual_seed(2))
        out[mode] = _fidelity(images, right, colours)
        out[mode]["max_abs"] = float(images.abs().max())
    return out


MODES = [("none", 1.0), ("text", 5.0), ("context", 5.0), ("joint", 5.0), ("interleaved", 5.0)]


def test_every_guidance_mode_does_its_job(tiny_text_encoder):
    stage, texts, losses = _train(tiny_text_encoder, steps=300)
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    res = _sample_modes(stage, texts, MODES)
    print(f"\nguidance learning: loss {first:.3f} -> {last:.3f}")
    for mode, r in res.items():
        print(f"  {mode:12s} text fidelity (named side) {r['right_side']:.0%}; subject fidelity (own colour) "
              f"{r['own_colour']:.0%}, colour error {r['colour_err']:.3f}")
    assert last < 0.6 * first, (first, last)
    none, text, ctx, inter = res["none"], res["text"], res["context"], res["interleaved"]
    # text guidance improves text fidelity over no guidance
    assert text["right_side"] >= none["right_side"] + 0.15, res
    # context guidance improves subject fidelity over no guidance
    assert ctx["own_colour"] >= none["own_colour"] + 0.2 and ctx["colour_err"] < 0.7 * none["colour_err"], res
    # interleaved holds both
    assert inter["right_side"] >= none["right_side"] + 0.1, res
    assert inter["own_colour"] >= none["own_colour"] + 0.1, res
