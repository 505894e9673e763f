import pytest
import torch

from suti.cascade import Stage
from suti.config import UNetConfig
from suti.presets import PRESET_NAMES, preset
from suti.unet import EfficientUNet

TINY = [n for n in PRESET_NAMES if n.startswith("tiny")]
PAPER = ["base64", "sr256", "sr1024"]
SMALL = [n for n in PRESET_NAMES if n not in TINY + PAPER]


def _shrink(cfg):
    """The paper's shape (levels, blocks, attention pattern) at tiny width and size, for a CPU test."""
    import dataclasses

    n = cfg.unet.num_levels
    unet = dataclasses.replace(cfg.unet, base_channels=8, head_dim=8, image_size=2 ** (n + 1),
                               num_res_blocks=tuple(min(b, 2) for b in cfg.unet.num_res_blocks))
    lowres = None if cfg.lowres_size is None else unet.image_size // 4
    return dataclasses.replace(cfg, unet=unet, lowres_size=lowres)


@pytest.mark.parametrize("name", TINY + SMALL + PAPER)
@pytest.mark.parametrize("context", [False, True])
def test_preset_shapes(name, context):
    cfg = preset(name, text_embed_dim=24, context=context)
    if name in PAPER:
        cfg = _shrink(cfg)
    unet = EfficientUNet(cfg.unet)
    s = cfg.unet.image_size
    b = 2
    x = torch.randn(b, 3, s, s)
    t = torch.rand(b)
    text = torch.randn(b, 5, 24)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)  # row 2: dropped text
    kw = {}
    if cfg.unet.lowres_cond:
        kw = dict(lowres=torch.randn(b, 3, s, s), aug_level=torch.rand(b))
    out = unet(x, t, text, mask, **kw)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_paper_presets_keep_paper_features():
    base = preset("base64")
    assert base.unet.base_channels == 512 and any(base.unet.self_attention)
    sr1024 = preset("sr1024")
    assert not any(sr1024.unet.self_attention) and not sr1024.unet.middle_self_attention  # 1024 has no self-attn
    assert sr1024.unet.cross_attention[-1] and sr1024.lowres_size == 256
    sr256 = preset("sr256")
    # Efficient U-Net: more residual blocks at low resolution
    assert sr256.unet.num_res_blocks[-1] > sr256.unet.num_res_blocks[0]


def test_tiny_presets_are_small():
    for name in TINY:
        n = EfficientUNet(preset(name, text_embed_dim=64).unet).num_parameters()
        assert n < 6e6, (name, n)


def test_skip_scale_and_down_before_convs():
    unet = EfficientUNet(preset("tiny-base32", text_embed_dim=8).unet)
    # level 0 has no downsample; deeper levels downsample before their res blocks
    assert isinstance(unet.downsamples[0], torch.nn.Identity)
    assert isinstance(unet.downsamples[1], torch.nn.Conv2d) and unet.downsamples[1].stride == (2, 2)
    # up stack: the last level has no upsample; others upsample after their blocks
    assert isinstance(unet.upsamples[-1], torch.nn.Identity)


@pytest.mark.parametrize("name", ["sr256", "sr1024"])
def test_paper_sr_shapes_downsample_in_every_dblock(name):
    """Efficient U-Net SR: 4 DBlocks (128/256/512/1024 ch, 2/4/8/8 blocks), each downsampling first, so the
    bottom runs at 1/16 of the image size and nothing runs at full resolution."""
    cfg = preset(name, text_embed_dim=4096)
    assert cfg.unet.channel_mults == (1, 2, 4, 8) and cfg.unet.num_res_blocks == (2, 4, 8, 8)
    with torch.device("meta"):
        unet = EfficientUNet(cfg.unet)
    assert all(isinstance(d, torch.nn.Conv2d) and d.stride == (2, 2) for d in unet.downsamples)
    assert not any(isinstance(u, torch.nn.Identity) for u in unet.upsamples)
    # Paper: 600M (256) and 400M (1024) with T5-XXL; this implementation lands in the same range.
    assert 3e8 < unet.num_parameters() < 7e8
    small = _shrink(preset(name, text_embed_dim=8, context=True))
    s = small.unet.image_size
    feats = EfficientUNet(small.unet).exemplar_features(
        torch.randn(1, 3, s, s), torch.zeros(1), torch.randn(1, 2, 8), torch.ones(1, 2, dtype=torch.bool),
        lowres=torch.randn(1, 3, s, s))
    assert feats["middle"].shape[-1] == s // 16 and feats["level3"].shape[-1] == s // 16


def test_bad_config_and_input_errors():
    with pytest.raises(ValueError, match="num_res_blocks"):
        UNetConfig(channel_mults=(1, 2), num_res_blocks=(1,), self_attention=(0, 0), cross_attention=(0, 0))
    st = Stage(preset("tiny-sr64", text_embed_dim=8))
    with pytest.raises(ValueError, match="lowres"):
        st.unet(torch.randn(1, 3, 64, 64), torch.rand(1), torch.randn(1, 2, 8), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="32px|64px"):
        Stage(preset("tiny-base32", text_embed_dim=8)).unet(
            torch.randn(1, 3, 64, 64), torch.rand(1), torch.randn(1, 2, 8), torch.ones(1, 2, dtype=torch.bool))
