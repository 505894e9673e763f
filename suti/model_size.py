"""How big a U-Net config is, worked out from the config alone (nothing is allocated).

``check_model_size`` refuses configs whose parameter count or resolution is beyond a sane cap, so a
typo (``base_channels: 51200``, ``num_res_blocks: [10000000]``) is an error naming the field instead of
a machine running out of memory. Raise the caps with ``SUTI_MAX_PARAMS`` / ``SUTI_MAX_IMAGE_SIZE``.
"""
from __future__ import annotations

import os

# Imagen's largest U-Net (the 64 px base) has 2B parameters; 8B leaves room for bigger experiments.
DEFAULT_MAX_PARAMS = 8_000_000_000
DEFAULT_MAX_IMAGE_SIZE = 4096  # Imagen's last stage draws 1024 px

__all__ = ["estimate_unet_parameters", "check_model_size", "max_params", "max_image_size"]


def _conv(i: int, o: int, k: int = 3) -> int:
    return k * k * i * o + o


def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _res_block(i: int, o: int, emb: int) -> int:
    return 2 * i + _conv(i, o) + _linear(emb, 2 * o) + 2 * o + _conv(o, o) + (_conv(i, o, 1) if i != o else 0)


def _attention(ch: int, kv: int | None = None) -> int:
    n = 2 * ch + _linear(ch, ch, False) + _linear(kv or ch, 2 * ch, False) + _linear(ch, ch)
    return n + (2 * kv + 2 * ch if kv is not None else 0)


def _level(in_ch: int, ch: int, blocks: int, emb: int, cond: int, self_attn, cross, context) -> int:
    n = _res_block(in_ch, ch, emb) + (blocks - 1) * _res_block(ch, ch, emb) if blocks else 0
    return n + (_attention(ch) if self_attn else 0) + (_attention(ch, cond) if cross else 0) + \
        (_attention(ch, ch) if context else 0)


def estimate_unet_parameters(cfg) -> int:
    """The parameter count of ``EfficientUNet(cfg)`` (``cfg``: a UNetConfig), computed from the shapes."""
    chs = [cfg.base_channels * m for m in cfg.channel_mults]
    emb = cond = cfg.base_channels * cfg.time_embed_mult
    t = cfg.text_embed_dim
    mlp = _linear(cfg.base_channels, emb) + _linear(emb, emb)
    n = mlp * (2 if cfg.lowres_cond else 1)
    n += 2 * t + _linear(t, cond)  # text projection
    n += cond + _linear(cond, cond) + _linear(cond, 2 * cond) + _linear(cond, cond)  # attention pooling
    n += cond + 2 * cond + _linear(cond, emb)  # null pooled vector, pooled -> embedding
    n += _conv(cfg.in_channels * (2 if cfg.lowres_cond else 1), chs[0])
    context = cfg.context_attention or (False,) * len(chs)
    prev = chs[0]
    for i, ch in enumerate(chs):
        if i > 0 or cfg.downsample_first:
            n += _conv(prev, ch)
        n += _level(ch, ch, cfg.num_res_blocks[i], emb, cond, cfg.self_attention[i], cfg.cross_attention[i],
                    context[i])
        prev = ch
    n += _level(chs[-1], chs[-1], 2, emb, cond, cfg.middle_self_attention, cfg.cross_attention[-1],
                cfg.middle_context_attention)
    for i in reversed(range(len(chs))):
        ch = chs[i]
        n += _level(prev + ch, ch, cfg.num_res_blocks[i], emb, cond, cfg.self_attention[i], cfg.cross_attention[i],
                    context[i])
        out = chs[i - 1] if i > 0 else ch
        if i > 0 or cfg.downsample_first:
            n += _conv(ch, out)
        prev = out
    return n + 2 * chs[0] + _conv(chs[0], cfg.out_channels)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(float(raw))
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None


def max_params() -> int:
    return _env_int("SUTI_MAX_PARAMS", DEFAULT_MAX_PARAMS)


def max_image_size() -> int:
    return _env_int("SUTI_MAX_IMAGE_SIZE", DEFAULT_MAX_IMAGE_SIZE)


def check_model_size(cfg, where: str = "UNetConfig") -> int:
    """Refuse a config beyond the caps (see the module docstring); returns the parameter estimate."""
    if cfg.image_size > max_image_size():
        raise ValueError(f"{where}.image_size={cfg.image_size} is over the limit of {max_image_size()} px; "
                         "set SUTI_MAX_IMAGE_SIZE to allow it")
    n = estimate_unet_parameters(cfg)
    if n > max_params():
        raise ValueError(f"{where}: this U-Net would have {n:.3g} parameters ({4 * n / 1e9:.3g} GB in float32), over "
                         f"the limit of {max_params():.3g} (base_channels={cfg.base_channels}, channel_mults="
                         f"{list(cfg.channel_mults)}, num_res_blocks={list(cfg.num_res_blocks)}); set SUTI_MAX_PARAMS "
                         "to allow it")
    return n
