"""A super-resolution stage learns to use its low-resolution input.

Targets are 16 px mosaics of 4x4 px tiles in random colours: the colours exist only in the 8 px low-res
input, and the sharp tile edges exist in no upsampling of it. A tiny SR stage trained on random mosaics must
beat the bicubic upsample of unseen mosaics by a clear margin; with its low-res input swapped for another
mosaic's it must lose that advantage (it reads the input rather than drawing a fixed picture).
"""
import torch

from suti.cascade import Stage, resize
from suti.config import DiffusionConfig, StageConfig, UNetConfig
from suti.sampling import Guidance

SIZE, LOW, TILE = 16, 8, 4


def _mosaics(n, g):
    tiles = torch.rand(n, 3, SIZE // TILE, SIZE // TILE, generator=g) * 2 - 1
    return tiles.repeat_interleave(TILE, 2).repeat_interleave(TILE, 3)


def _sr_stage(text_dim):
    cfg = StageConfig(name="sr16", lowres_size=LOW, unet=UNetConfig(
        image_size=SIZE, base_channels=32, channel_mults=(1, 2), num_res_blocks=(1, 1), self_attention=(False, False),
        cross_attention=(False, False), middle_self_attention=False, text_embed_dim=text_dim, head_dim=32,
        lowres_cond=True), diffusion=DiffusionConfig(prediction="v", noise_aug_max=0.3))
    return Stage(cfg)


def test_sr_stage_beats_bicubic_upsampling(tiny_text_encoder):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    emb, mask = tiny_text_encoder.encode(["a mosaic"])
    stage = _sr_stage(tiny_text_encoder.dim)
    opt = torch.optim.AdamW(stage.parameters(), lr=2e-3)
    losses, batch = [], 16
    for _ in range(400):
        x0 = _mosaics(batch, g)
        loss = stage.training_loss(x0, emb.expand(batch, -1, -1), mask.expand(batch, -1), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    stage.eval()

    n = 12
    truth = _mosaics(n, torch.Generator().manual_seed(123))  # unseen mosaics
    low = resize(truth, LOW)
    kw = dict(steps=10, guidance=Guidance(scale=1.0), aug_level=0.0)
    out = stage.sample(emb.expand(n, -1, -1), mask.expand(n, -1), lowres=low,
                       generator=torch.Generator().manual_seed(1), **kw)
    swapped = stage.sample(emb.expand(n, -1, -1), mask.expand(n, -1), lowres=low.roll(1, 0),
                           generator=torch.Generator().manual_seed(1), **kw)
    mse = lambda a: float(((a - truth) ** 2).mean())  # noqa: E731
    bicubic = resize(low, SIZE)
    sr, bic, swap = mse(out), mse(bicubic), mse(swapped)
    print(f"\nSR learning: loss {first:.3f} -> {last:.3f}; MSE to the true 16 px mosaic: SR {sr:.4f}, "
          f"bicubic {bic:.4f} ({bic / sr:.1f}x the SR error), SR with another mosaic's input {swap:.4f}")
    assert last < 0.5 * first, (first, last)
    assert sr < 0.5 * bic, (sr, bic)  # a clear margin over the bicubic upsample
    assert swap > 5 * sr, (swap, sr)  # the output follows the low-res input
