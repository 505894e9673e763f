"""Stage presets: the paper's shapes (Imagen appendix F) and tiny CPU members of the same family.

``preset(name, text_embed_dim=..., context=True)`` returns a StageConfig. With ``context=True`` the
lowest-resolution level and the middle block get SuTI context attention.
"""
from __future__ import annotations

import dataclasses

from .config import DiffusionConfig, StageConfig, UNetConfig

_PRESETS = {
    # Imagen base 64x64 (2B in the paper with T5-XXL): 512 channels, attention at 32/16/8.
    "base64": dict(unet=dict(image_size=64, base_channels=512, channel_mults=(1, 2, 3, 4), num_res_blocks=(3, 3, 3, 3),
                             self_attention=(False, True, True, True), cross_attention=(False, True, True, True),
                             head_dim=64), lowres_size=None),
    # Efficient U-Net 64->256 (600M in the paper): four DBlocks of 128/256/512/1024 channels with 2/4/8/8
    # residual blocks, each downsampling first (256 -> 16 px at the bottom); attention only at the lowest level.
    "sr256": dict(unet=dict(image_size=256, base_channels=128, channel_mults=(1, 2, 4, 8), num_res_blocks=(2, 4, 8, 8),
                            self_attention=(False, False, False, True), cross_attention=(False, False, False, True),
                            downsample_first=True, lowres_cond=True), lowres_size=64),
    # Efficient U-Net 256->1024 (400M in the paper): the same shape, no self-attention, text cross-attention
    # at the lowest level only. Trained on 256 px crops in the paper; it is fully convolutional but for that.
    "sr1024": dict(unet=dict(image_size=1024, base_channels=128, channel_mults=(1, 2, 4, 8), num_res_blocks=(2, 4, 8, 8),
                             self_attention=(False,) * 4, cross_attention=(False, False, False, True),
                             middle_self_attention=False, downsample_first=True, lowres_cond=True), lowres_size=256),
    # Tiny CPU family members (a few M parameters or less).
    "tiny-base32": dict(unet=dict(image_size=32, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=(1, 1, 2),
                                  self_attention=(False, False, True), cross_attention=(False, True, True),
                                  head_dim=32), lowres_size=None),
    "tiny-base64": dict(unet=dict(image_size=64, base_channels=32, channel_mults=(1, 2, 3, 4), num_res_blocks=(1, 1, 2, 2),
                                  self_attention=(False, False, True, True), cross_attention=(False, False, True, True),
                                  head_dim=32), lowres_size=None),
    "small-base64": dict(unet=dict(image_size=64, base_channels=64, channel_mults=(1, 2, 3, 4), num_res_blocks=(2, 2, 3, 3),
                                   self_attention=(False, False, True, True), cross_attention=(False, False, True, True),
                                   head_dim=32), lowres_size=None),
    "tiny-sr64": dict(unet=dict(image_size=64, base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=(1, 1, 2),
                                self_attention=(False, False, True), cross_attention=(False, False, True),
                                head_dim=16, downsample_first=True, lowres_cond=True), lowres_size=32),
    "tiny-sr128": dict(unet=dict(image_size=128, base_channels=16, channel_mults=(1, 2, 4, 4), num_res_blocks=(1, 1, 2, 2),
                                 self_attention=(False,) * 4, cross_attention=(False, False, False, True),
                                 middle_self_attention=False, head_dim=16, downsample_first=True, lowres_cond=True),
                   lowres_size=64),
}

PRESET_NAMES = tuple(_PRESETS)


def preset(name: str, text_embed_dim: int = 512, context: bool = False, prediction: str = "v",
           stage_name: str | None = None) -> StageConfig:
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(_PRESETS)}")
    spec = _PRESETS[name]
    unet = dict(spec["unet"], text_embed_dim=text_embed_dim)
    n = len(unet["channel_mults"])
    if context:
        unet["context_attention"] = tuple(i == n - 1 for i in range(n))
        unet["middle_context_attention"] = True
    cfg = StageConfig(name=stage_name or name, unet=UNetConfig(**unet), diffusion=DiffusionConfig(prediction=prediction),
                      lowres_size=spec["lowres_size"])
    return cfg


def with_context(cfg: StageConfig, levels: tuple | None = None, middle: bool = True) -> StageConfig:
    """A copy of ``cfg`` with SuTI context attention (default: the lowest-resolution level + middle)."""
    n = cfg.unet.num_levels
    levels = tuple(levels) if levels is not None else tuple(i == n - 1 for i in range(n))
    unet = dataclasses.replace(cfg.unet, context_attention=levels, middle_context_attention=middle)
    return dataclasses.replace(cfg, unet=unet)
