"""SuTI learns to read its exemplars: the target colour is only in the exemplars, never in the prompt.

A copy task (the target is the exemplars' colour). The default run covers held-out exemplar colours with
a new-context target in tests/core/test_guidance_learning.py; this longer one also checks the dropped path.
"""
import pytest
import torch
from colour_subjects import HELD_OUT, train_colours

from suti.cascade import Stage
from suti.config import DiffusionConfig, StageConfig, UNetConfig
from suti.context import Exemplars
from suti.sampling import Guidance

SIZE, K = 16, 3


def _stage(text_dim):
    cfg = StageConfig(name="base", unet=UNetConfig(
        image_size=SIZE, base_channels=32, channel_mults=(1, 2), num_res_blocks=(1, 1), self_attention=(False, True),
        cross_attention=(False, True), context_attention=(False, True), middle_context_attention=True,
        text_embed_dim=text_dim, head_dim=32), diffusion=DiffusionConfig(prediction="v"))
    return Stage(cfg)


def _train_colours(n, g):
    return train_colours(n, g)


def _batch(colours, text, g):
    n = len(colours)
    target = colours[:, :, None, None].expand(n, 3, SIZE, SIZE).clone()
    ex = colours[:, None, :, None, None].expand(n, K, 3, SIZE, SIZE) + 0.05 * torch.randn(n, K, 3, SIZE, SIZE, generator=g)
    emb, mask = text
    return target, Exemplars(ex.clamp(-1, 1), emb[None].expand(n, K, -1, -1), mask[None].expand(n, K, -1),
                             torch.ones(n, K, dtype=torch.bool))


@pytest.mark.slow
def test_suti_copies_held_out_exemplar_colours(tiny_text_encoder):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    prompt_emb, prompt_mask = tiny_text_encoder.encode(["a photo of the object"])
    ex_text = tiny_text_encoder.encode(["a photo"])
    ex_text = (ex_text[0][0], ex_text[1][0])
    stage = _stage(tiny_text_encoder.dim)
    opt = torch.optim.AdamW(stage.parameters(), lr=2e-3)
    losses = []
    batch = 24
    for _ in range(260):
        target, ex = _batch(_train_colours(batch, g), ex_text, g)
        loss = stage.training_loss(target, prompt_emb.expand(batch, -1, -1), prompt_mask.expand(batch, -1),
                                   exemplars=ex, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < 0.4 * first, (first, last)

    stage.eval()
    n = len(HELD_OUT)
    _, ex = _batch(HELD_OUT, ex_text, torch.Generator().manual_seed(1))
    kw = dict(steps=10, generator=torch.Generator().manual_seed(2))
    out = stage.sample(prompt_emb.expand(n, -1, -1), prompt_mask.expand(n, -1), exemplars=ex,
                       guidance=Guidance(scale=3.0, mode="context"), **kw)
    got = out.mean((2, 3))
    err, wrong, chance = _scores(got)
    print(f"SuTI learning: loss {first:.3f} -> {last:.3f}; held-out colour error {err.mean():.3f} "
          f"vs chance {chance.mean():.3f} (ratio {chance.mean() / err.mean():.1f}x); nearest wrong {wrong.mean():.3f}")
    assert bool((err < wrong).all()), (err, wrong)  # every sample is closest to its own exemplars' colour
    assert float(err.mean()) < 0.4 * float(chance.mean())

    # Context dropped: with no exemplars the context layers attend to their learned null key/value alone,
    # the path training took for its context-dropped rows. The colour is then not recoverable: the output
    # is no nearer its own held-out colour than to the others.
    out_drop = stage.sample(prompt_emb.expand(n, -1, -1), prompt_mask.expand(n, -1), exemplars=None,
                            guidance=Guidance(scale=3.0), **dict(kw, generator=torch.Generator().manual_seed(2)))
    err_drop, wrong_drop, chance_drop = _scores(out_drop.mean((2, 3)))
    own = float((err_drop < wrong_drop).float().mean())
    print(f"context dropped: error {err_drop.mean():.3f} vs chance {chance_drop.mean():.3f} "
          f"(with context {err.mean():.3f}); closest to own colour {own:.0%}")
    assert float(err_drop.mean()) > 2.5 * float(err.mean())
    assert float(err_drop.mean()) > 0.75 * float(chance_drop.mean())
    assert own <= 0.5


def _scores(got):
    """Per held-out colour: error to its own colour, to the nearest other one, and to the others on average
    (chance: what copying the wrong subject would score)."""
    n = len(HELD_OUT)
    err = (got - HELD_OUT).abs().mean(1)
    dists = (got[:, None] - HELD_OUT[None]).abs().mean(-1)
    wrong = dists.masked_fill(torch.eye(n, dtype=torch.bool), float("inf")).min(1).values
    chance = dists.masked_fill(torch.eye(n, dtype=torch.bool), 0).sum(1) / (n - 1)
    return err, wrong, chance
