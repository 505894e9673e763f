"""Training: data loading, EMA, resumable checkpoints and the accelerate trainer (one stage at a time)."""
from .config import DataSpec, EMASpec, OptimSpec, SampleSpec, StageSpec, TextSpec, TrainConfig
from .data import BatchStream, DataError, DataPosition, FolderSource, ShardSource, SkipStats, expand_sources, make_loader
from .ema import EMA
from .text import TextConditioner
from .trainer import Trainer, lr_at, step_generator

__all__ = [
    "TrainConfig", "StageSpec", "TextSpec", "DataSpec", "OptimSpec", "EMASpec", "SampleSpec",
    "BatchStream", "DataError", "DataPosition", "FolderSource", "ShardSource", "SkipStats", "expand_sources",
    "make_loader", "EMA", "TextConditioner", "Trainer", "lr_at", "step_generator",
]
