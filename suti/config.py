"""Configuration dataclasses. They serialise to JSON beside the safetensors weights."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .config_loading import build_dataclass
from .field_checks import check_fields, is_int, require
from .model_size import check_model_size


def _tuple_fields(obj):
    # JSON turns tuples into lists; turn them back so configs compare equal after a round trip.
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, list):
            setattr(obj, f.name, tuple(v))


def _per_level(cfg, name: str, kind, what: str) -> None:
    values, n = getattr(cfg, name), len(cfg.channel_mults)
    require(len(values) == n, f"UNetConfig.{name}", f"has {len(values)} entries, channel_mults has {n}")
    for i, v in enumerate(values):
        require(kind(v), f"UNetConfig.{name}[{i}]", f"must be {what}, got {v!r} ({type(v).__name__})")


def check_unet_values(cfg) -> None:
    """Every U-Net field's range, and the shape rules the layers need, before a weight is allocated."""
    where = "UNetConfig"
    for name in ("image_size", "in_channels", "out_channels", "base_channels", "text_embed_dim", "head_dim",
                 "num_groups", "time_embed_mult", "attention_pool_heads"):
        require(getattr(cfg, name) >= 1, f"{where}.{name}", f"must be >= 1, got {getattr(cfg, name)}")
    require(0.0 <= cfg.dropout < 1.0, f"{where}.dropout", f"must be in [0, 1), got {cfg.dropout}")
    require(len(cfg.channel_mults) >= 1, f"{where}.channel_mults", "must have at least one level")
    _per_level(cfg, "channel_mults", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _per_level(cfg, "num_res_blocks", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    for name in ("self_attention", "cross_attention", "context_attention"):
        _per_level(cfg, name, lambda v: isinstance(v, bool), "true or false")
    # The sinusoidal time features have base_channels entries in cos/sin pairs.
    require(cfg.base_channels % 2 == 0, f"{where}.base_channels", f"must be even, got {cfg.base_channels}")
    cond = cfg.base_channels * cfg.time_embed_mult
    require(cond % cfg.attention_pool_heads == 0, f"{where}.attention_pool_heads",
            f"({cfg.attention_pool_heads}) must divide base_channels * time_embed_mult ({cond})")
    n = len(cfg.channel_mults)
    for i, m in enumerate(cfg.channel_mults):
        ch = cfg.base_channels * m
        for width in (ch, 2 * ch):  # the up stack's first block reads the skip concatenated: 2 * ch
            require(width % min(cfg.num_groups, width) == 0, f"{where}.num_groups",
                    f"({cfg.num_groups}) must divide the channels of level {i} ({width})")
        heads = max(1, ch // cfg.head_dim)
        attends = cfg.self_attention[i] or cfg.cross_attention[i] or cfg.context_attention[i] or i == n - 1
        require(not attends or ch % heads == 0, f"{where}.head_dim",
                f"({cfg.head_dim}) splits level {i}'s {ch} channels into {heads} heads unevenly")
    factor = 2 ** (n if cfg.downsample_first else n - 1)
    require(cfg.image_size % factor == 0, f"{where}.image_size={cfg.image_size}",
            f"is not divisible by {factor} ({n} levels, downsample_first={cfg.downsample_first})")
    check_model_size(cfg, where)


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
        check_fields(self, "UNetConfig")
        if self.context_attention is None:
            self.context_attention = (False,) * len(self.channel_mults)
        check_unet_values(self)

    @property
    def num_levels(self) -> int:
        return len(self.channel_mults)

    @property
    def uses_context(self) -> bool:
        return any(self.context_attention) or self.middle_context_attention


# eps-prediction's x0 estimate is (x - sigma eps) / alpha: the model's error times 1/alpha, which is 4.5e-5
# at log-SNR -20. Samplers start eps stages at -5 (alpha 0.08; about where Stable Diffusion's schedule ends),
# where x_T ~ N(0, I) still is the marginal to within a few percent of the data's scale.
EPS_SAMPLE_LOGSNR_MIN = -5.0


@dataclass
class DiffusionConfig:
    prediction: str = "v"  # "eps" or "v"
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    loss: str = "mse"  # "mse" or "l1"
    # Condition dropping, so that every branch guidance compares against is a trained input. Each training row
    # falls in one of four disjoint cases (suti.diffusion.drop_masks): text alone dropped, context alone dropped,
    # both dropped, or nothing dropped. A stage without context attention drops text with text_drop_prob.
    text_drop_prob: float = 0.1  # text dropped, context kept: the "no_text" branch of text/interleaved guidance
    context_drop_prob: float = 0.1  # context dropped, text kept: the "no_context" branch of context guidance
    joint_drop_prob: float = 0.1  # both dropped: the "uncond" branch of joint guidance
    # Log-SNR the samplers start from. None: logsnr_min for v-prediction; for eps-prediction -5, because
    # x0 = (x - sigma eps) / alpha multiplies the model's error by 1/alpha (22,000 at log-SNR -20).
    sample_logsnr_min: float | None = None
    exemplar_t: float = 0.0  # noise level the exemplars are encoded at (Re-Imagen/SuTI: clean, t=0)
    # Noise-conditioning augmentation for SR stages: uniform level in [0, max] at training, fixed at sampling.
    noise_aug_max: float = 0.5
    noise_aug_sample: float = 0.2

    def __post_init__(self):
        check_diffusion_values(self)
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"DiffusionConfig.prediction must be 'eps' or 'v', got {self.prediction!r}")
        if self.loss not in ("mse", "l1"):
            raise ValueError(f"DiffusionConfig.loss must be 'mse' or 'l1', got {self.loss!r}")
        probs = (self.text_drop_prob, self.context_drop_prob, self.joint_drop_prob)
        if sum(probs) > 1.0:
            raise ValueError(f"DiffusionConfig: text_drop_prob + context_drop_prob + joint_drop_prob = {sum(probs)} "
                             "exceeds 1 (they are disjoint cases of one training row)")

    @property
    def sampling_logsnr_min(self) -> float:
        """Where samplers start: see ``sample_logsnr_min``."""
        if self.sample_logsnr_min is not None:
            return max(self.sample_logsnr_min, self.logsnr_min)
        return self.logsnr_min if self.prediction == "v" else max(self.logsnr_min, EPS_SAMPLE_LOGSNR_MIN)


def check_diffusion_values(cfg) -> None:
    """Types (every float finite, every *_prob in [0, 1]) and the ranges the schedule needs."""
    check_fields(cfg, "DiffusionConfig")
    require(cfg.logsnr_min < cfg.logsnr_max, "DiffusionConfig.logsnr_min",
            f"({cfg.logsnr_min}) must be below logsnr_max ({cfg.logsnr_max})")
    for name in ("exemplar_t", "noise_aug_max", "noise_aug_sample"):
        require(0.0 <= getattr(cfg, name) <= 1.0, f"DiffusionConfig.{name}", f"must be in [0, 1], got {getattr(cfg, name)}")


@dataclass
class StageConfig:
    """One cascade stage: its U-Net, its diffusion settings and its resolutions."""

    name: str = "base"
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    lowres_size: int | None = None  # None for the base stage

    def __post_init__(self):
        self.unet = build_dataclass(UNetConfig, self.unet, f"stage {self.name!r} unet")
        self.diffusion = build_dataclass(DiffusionConfig, self.diffusion, f"stage {self.name!r} diffusion")
        check_fields(self, "StageConfig")
        require(bool(self.name.strip()) and "/" not in self.name and "\\" not in self.name, "StageConfig.name",
                f"must be a non-empty folder name, got {self.name!r}")
        require(self.lowres_size is None or 1 <= self.lowres_size < self.unet.image_size, "StageConfig.lowres_size",
                f"must be between 1 and unet.image_size ({self.unet.image_size}), got {self.lowres_size}")
        if (self.lowres_size is not None) != self.unet.lowres_cond:
            raise ValueError(f"stage {self.name!r}: lowres_size is set iff unet.lowres_cond is True")

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageConfig":
        return build_dataclass(cls, d, "stage config")

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
        check_fields(self, "CascadeConfig")
        require(self.text_max_length >= 1, "CascadeConfig.text_max_length", f"must be >= 1, got {self.text_max_length}")
        require(len(self.stages) >= 1 and all(isinstance(n, str) and n for n in self.stages), "CascadeConfig.stages",
                f"must be a non-empty list of stage names, got {list(self.stages)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CascadeConfig":
        if not isinstance(d, dict):
            raise ValueError(f"cascade config: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
