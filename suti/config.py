"""Configuration dataclasses. They serialise to JSON beside the safetensors weights."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


def _tuple_fields(obj):
    # JSON turns tuples into lists; turn them back so configs compare equal after a round trip.
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, list):
            setattr(obj, f.name, tuple(v))


def _build(cls, d: dict, where: str):
    """``cls(**d)`` with a clear error for unknown keys (a typo in a config file or an override)."""
    if isinstance(d, cls):
        return d
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys are {sorted(known)}")
    return cls(**d)


@dataclass
class UNetConfig:
    """Efficient U-Net (Imagen, appendix B). Per-level tuples run from the highest resolution down."""

    image_size: int = 64
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mults: tuple = (1, 2, 3, 4)
    num_res_blocks: tuple = (2, 3, 4, 4)  # Efficient U-Net: more blocks at low resolution
    self_attention: tuple = (False, False, True, True)
    cross_attention: tuple = (False, False, True, True)
    # SuTI: levels whose DStack/UStack blocks attend to exemplar features (default: lowest resolution)
    context_attention: tuple | None = None  # None: no context attention
    middle_context_attention: bool = False
    middle_self_attention: bool = True
    text_embed_dim: int = 512
    head_dim: int = 64
    num_groups: int = 8  # GroupNorm groups
    time_embed_mult: int = 4
    dropout: float = 0.0
    lowres_cond: bool = False  # super-resolution stage: concat the upsampled low-res image
    # Efficient U-Net SR stages also downsample in the first DBlock (and upsample after the last UBlock),
    # so no residual block runs at full resolution: what keeps the 1024 stage's memory in bounds.
    downsample_first: bool = False
    attention_pool_heads: int = 4

    def __post_init__(self):
        _tuple_fields(self)
        n = len(self.channel_mults)
        if self.context_attention is None:
            self.context_attention = (False,) * n
        for name in ("num_res_blocks", "self_attention", "cross_attention", "context_attention"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"UNetConfig.{name} has {len(getattr(self, name))} entries, channel_mults has {n}")
        factor = 2 ** (n if self.downsample_first else n - 1)
        if self.image_size % factor:
            raise ValueError(f"UNetConfig.image_size={self.image_size} is not divisible by {factor} "
                             f"({n} levels, downsample_first={self.downsample_first})")

    @property
    def num_levels(self) -> int:
        return len(self.channel_mults)

    @property
    def uses_context(self) -> bool:
        return any(self.context_attention) or self.middle_context_attention


@dataclass
class DiffusionConfig:
    prediction: str = "v"  # "eps" or "v"
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    loss: str = "mse"  # "mse" or "l1"
    text_drop_prob: float = 0.1  # text (and context) dropped together: classifier-free guidance
    context_drop_prob: float = 0.1  # context alone dropped (SuTI)
    exemplar_t: float = 0.0  # noise level the exemplars are encoded at (Re-Imagen/SuTI: clean, t=0)
    # Noise-conditioning augmentation for SR stages: uniform level in [0, max] at training, fixed at sampling.
    noise_aug_max: float = 0.5
    noise_aug_sample: float = 0.2

    def __post_init__(self):
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"DiffusionConfig.prediction must be 'eps' or 'v', got {self.prediction!r}")
        if self.loss not in ("mse", "l1"):
            raise ValueError(f"DiffusionConfig.loss must be 'mse' or 'l1', got {self.loss!r}")


@dataclass
class StageConfig:
    """One cascade stage: its U-Net, its diffusion settings and its resolutions."""

    name: str = "base"
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    lowres_size: int | None = None  # None for the base stage

    def __post_init__(self):
        self.unet = _build(UNetConfig, self.unet, f"stage {self.name!r} unet config")
        self.diffusion = _build(DiffusionConfig, self.diffusion, f"stage {self.name!r} diffusion config")
        if (self.lowres_size is not None) != self.unet.lowres_cond:
            raise ValueError(f"stage {self.name!r}: lowres_size is set iff unet.lowres_cond is True")

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageConfig":
        return _build(cls, d, "stage config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class CascadeConfig:
    """The cascade: a text encoder reference and the ordered stage names (base first)."""

    text_encoder: str = "text_encoder"  # hub name, or a folder relative to the checkpoint folder
    text_max_length: int = 128
    stages: tuple = ("base",)

    def __post_init__(self):
        _tuple_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CascadeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
