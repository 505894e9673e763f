"""Training configuration: nested dataclasses read from YAML/JSON, with dotted ``key=value`` overrides.

See configs/train_tiny_base.yaml for an annotated example of every field.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..config_loading import build_dataclass, looks_float
from ..config_loading import read_config_file as _read_config_file
from ..field_checks import check_fields

MIXED_PRECISION = ("no", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")
RESUME = ("auto", "always", "never")
OPTIM_IMPLEMENTATIONS = ("auto", "for-loop", "foreach", "fused")


@dataclass
class StageSpec:
    """Which stage to train. ``config`` (a full StageConfig dict) wins over ``preset``.
    ``overrides`` are merged into the chosen config: e.g. {"unet": {"dropout": 0.1}}."""

    preset: str | None = "tiny-base32"
    config: dict | None = None
    name: str | None = None  # stage name in the exported folder (default: "base" or "sr<size>")
    prediction: str = "v"
    overrides: dict = field(default_factory=dict)
    # in_context only: the U-Net levels (0 = full resolution) that get context attention, plus the middle block;
    # None = the lowest level. At 32 px the subject's parts vanish at 8x8, so small stages need a finer level.
    context_levels: list | None = None


@dataclass
class TextSpec:
    """The frozen text encoder (HF name or folder) and/or a precomputed TextEmbeddingCache folder.
    With a cache, training never runs the encoder (the encoder, if given, is only used for sample prompts
    and for captions the cache lacks)."""

    encoder: str | None = None
    max_length: int = 64
    dtype: str = "float32"
    cache: str | None = None


@dataclass
class DataSpec:
    sources: list = field(default_factory=list)  # shard paths/globs/brace patterns, or image folders
    task: str = "text_to_image"  # or "in_context" (ICL shards; the stage gets context attention)
    shuffle: bool = True
    shuffle_buffer: int = 1000  # records; folders are also fully permuted each epoch
    num_workers: int = 0
    fit: str = "center-crop"  # or "pad"
    max_exemplars: int = 5


@dataclass
class OptimSpec:
    name: str = "adamw"  # adamw, or adamw8bit (bitsandbytes' 8-bit AdamW, if installed)
    # AdamW's kernels: auto (torch's choice: for-loop on the CPU, foreach on CUDA), for-loop, foreach (one
    # multi-tensor kernel per op), fused (one kernel for the whole update; CPU and CUDA)
    implementation: str = "auto"
    lr: float = 1e-4
    betas: tuple = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 1000  # linear warm-up from 0
    schedule: str = "constant"  # after warm-up: "constant" or "cosine" (down to min_lr_ratio * lr)
    min_lr_ratio: float = 0.0


@dataclass
class EMASpec:
    enabled: bool = True
    decay: float = 0.9999
    warmup: bool = True  # decay_n = min(decay, (1+n)/(10+n))
    export: str = "ema"  # which weights the final stage folder gets: "ema" or "raw"


@dataclass
class SampleSpec:
    every: int = 0  # steps between sample grids (0: only at the end, if prompts or a held batch exist)
    prompts: list = field(default_factory=list)  # text-to-image base stage prompts
    num_held: int = 4  # held-out batch rows for SR (low-res input) and in-context (exemplars) grids
    steps: int = 25
    guidance: float = 5.0
    guidance_mode: str = "interleaved"  # what generation uses: interleaved with exemplars, plain CFG without
    per_prompt: int = 1
    seed: int = 0
    threshold: str = "dynamic"


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    stage: StageSpec = field(default_factory=StageSpec)
    text: TextSpec = field(default_factory=TextSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    ema: EMASpec = field(default_factory=EMASpec)
    sample: SampleSpec = field(default_factory=SampleSpec)
    init_from: str | None = None  # a stage folder; for in_context a text-to-image stage is converted
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    steps: int = 10000
    clip_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    resume: str = "auto"  # auto: resume if the run folder has a checkpoint; always: require one; never
    export_dir: str | None = None  # default: <output_dir>/stage
    cpu: bool = False  # force CPU even when CUDA is available
    # Speed options (benchmarks/train_throughput.py measures them; outputs agree within float tolerance):
    channels_last: bool = False  # NHWC weights and images: oneDNN / tensor-core convolutions skip layout copies
    compile: bool = False  # torch.compile the U-Net; the first step pays the compile time (logged, in the result)
    # Deterministic kernels (torch.use_deterministic_algorithms): what makes a resumed run bitwise equal to an
    # uninterrupted one on CUDA too (the CPU is deterministic anyway). Costs some GPU speed.
    deterministic: bool = False
    find_unused_parameters: bool = False
    progress: bool = True
    # Divergence guard: stop with an error when more than this share of the last `skip_window` steps were
    # skipped for a non-finite loss or gradient (1.0: never stop).
    max_skipped_share: float = 0.5
    skip_window: int = 20

    def __post_init__(self):
        for name, cls in _SECTIONS:
            setattr(self, name, build_dataclass(cls, getattr(self, name), name))
        if isinstance(self.data.sources, str):  # a single path or pattern
            self.data.sources = [self.data.sources]
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        if self.optim.name not in ("adamw", "adamw8bit"):
            raise ValueError(f"training config: optim.name must be adamw or adamw8bit, got {self.optim.name!r}")
        if isinstance(self.optim.betas, list):
            self.optim.betas = tuple(self.optim.betas)
        check_fields(self, "training config")
        for name, _ in _SECTIONS:
            check_fields(getattr(self, name), f"training config: {name}")
        self.validate()

    def validate(self) -> None:
        def need(ok, msg):
            if not ok:
                raise ValueError(f"training config: {msg}")

        need(self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}")
        need(self.optim.schedule in SCHEDULES, f"optim.schedule must be one of {SCHEDULES}")
        need(self.optim.implementation in OPTIM_IMPLEMENTATIONS,
             f"optim.implementation must be one of {OPTIM_IMPLEMENTATIONS}, got {self.optim.implementation!r}")
        need(self.optim.implementation == "auto" or self.optim.name == "adamw",
             "optim.implementation applies to optim.name=adamw only")
        need(self.resume in RESUME, f"resume must be one of {RESUME}")
        need(self.data.task in ("text_to_image", "in_context"), "data.task must be text_to_image or in_context")
        need(self.batch_size >= 1 and self.grad_accum >= 1 and self.steps >= 1,
             "batch_size, grad_accum and steps must be >= 1")
        o = self.optim
        need(o.warmup_steps >= 0 and o.lr > 0, f"optim.lr must be > 0 (got {o.lr}), warmup_steps >= 0")
        need(len(o.betas) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                       for b in o.betas), f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        need(o.eps > 0 and o.weight_decay >= 0 and 0 <= o.min_lr_ratio <= 1,
             "optim.eps must be > 0, optim.weight_decay >= 0 and optim.min_lr_ratio in [0, 1]")
        need(0 <= self.ema.decay < 1, f"ema.decay must be in [0, 1), got {self.ema.decay}")
        need(self.ema.export in ("ema", "raw"), "ema.export must be 'ema' or 'raw'")
        need(self.clip_grad_norm is None or self.clip_grad_norm > 0, "clip_grad_norm must be > 0 or null")
        need(0 < self.max_skipped_share <= 1 and self.skip_window >= 1,
             "max_skipped_share must be in (0, 1] and skip_window >= 1")
        need(self.checkpoint_every >= 0 and self.log_every >= 1, "checkpoint_every must be >= 0, log_every >= 1")
        s = self.sample
        need(s.every >= 0 and s.num_held >= 0 and s.steps >= 1 and s.per_prompt >= 1 and s.guidance >= 0,
             "sample.every and sample.num_held must be >= 0, sample.steps and sample.per_prompt >= 1, "
             "sample.guidance >= 0")
        need(self.text.max_length >= 1 and self.data.max_exemplars >= 1 and self.data.num_workers >= 0
             and self.data.shuffle_buffer >= 1, "text.max_length, data.max_exemplars and data.shuffle_buffer must "
             "be >= 1, data.num_workers >= 0")
        need(self.text.encoder or self.text.cache, "text.encoder or text.cache is required")
        need(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return build_dataclass(cls, d, "training config")

    @classmethod
    def load(cls, path, overrides: list[str] | None = None) -> "TrainConfig":
        d = read_config_file(path)
        for item in overrides or []:
            apply_override(d, item)
        return cls.from_dict(d)


def apply_override(d: dict, item: str) -> None:
    """``a.b.c=value`` (value parsed as YAML: numbers, booleans, lists, null) into nested dict ``d``."""
    import yaml

    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); quote list "
                         "items that contain braces, e.g. data.sources='[\"shards/{000000..000009}.tar\"]'") from e
    if isinstance(value, str) and raw.strip() and looks_float(raw.strip()):
        value = float(raw)  # YAML 1.1 reads "1e-4" as a string
    node = d
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {p} is not a section")
    node[parts[-1]] = value


_SECTIONS = (("stage", StageSpec), ("text", TextSpec), ("data", DataSpec), ("optim", OptimSpec), ("ema", EMASpec),
             ("sample", SampleSpec))


def read_config_file(path) -> dict:
    """A training config file (YAML or JSON) as a mapping; errors name the file."""
    return _read_config_file(path, "training config")
