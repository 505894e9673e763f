"""Stage and cascade checkpoints: a JSON config beside safetensors weights. No pickle.

    stage folder:    config.json  model.safetensors
    cascade folder:  cascade.json  [text_encoder/]  <stage name>/config.json  <stage name>/model.safetensors

Every file is written to a temporary name and moved into place, so a crash never leaves a torn file.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# atomic_write_text is re-exported for modules that still import it from here.
from retrieval.atomic import atomic_path, atomic_write_json, atomic_write_text, fsync_path  # noqa: F401

from .cascade import Cascade, Stage
from .config import CascadeConfig, StageConfig

FORMAT_VERSION = 1


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """``safetensors.save_file`` through ``retrieval.atomic.atomic_path``: the old file or the new one."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def swap_folder(new: Path, final: Path) -> Path:
    """Move a completely written folder ``new`` to ``final``, replacing any folder there. A crash leaves
    the old folder (as ``final`` or, between the two renames, as ``.<name>.old``) or the new one, never
    a mix of old and new files."""
    new, final = Path(new), Path(final)
    if final.exists():
        trash = final.with_name(f".{final.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        final.rename(trash)
        new.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        new.rename(final)
    if os.name == "posix":
        fsync_path(final.parent)
    return final


def load_tensors(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path}")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises several types for a torn or foreign file
        raise ValueError(f"cannot read safetensors file {path}: {e}") from e


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing config file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from e


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_stage(stage: Stage, folder, state_dict: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors``. ``state_dict`` overrides the weights (e.g. EMA).

    The two files are written into a fresh sibling folder that then replaces ``folder`` whole, so weights
    and config always come from the same save. Weights holding NaN or inf are refused: a diverged model
    is never written as if it were a result."""
    folder = Path(folder)
    if getattr(stage.config, "kind", None) == "suti-if":  # DeepFloyd IF stage: its new layers, never IF's weights
        from .if_backbone.files import save_if_stage

        if state_dict is not None:
            raise ValueError(f"stage {stage.name!r} is an IF stage: save the stage itself, not a state_dict")
        return save_if_stage(stage, folder)
    weights = state_dict if state_dict is not None else stage.unet.state_dict()
    bad = non_finite_tensors(weights)
    if bad:
        raise ValueError(f"refusing to save stage {stage.name!r} to {folder}: {len(bad)} weight tensors hold NaN or "
                         f"inf (e.g. {', '.join(bad[:3])}); the model has diverged")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    atomic_save_tensors(weights, tmp / "model.safetensors",
                        metadata={"format": "suti-stage", "version": str(FORMAT_VERSION)})
    cfg = {"format_version": FORMAT_VERSION, **stage.config.to_dict()}
    atomic_write_json(tmp / "config.json", cfg)
    return swap_folder(tmp, folder)


def load_stage_config(folder) -> StageConfig:
    path = Path(folder) / "config.json"
    d = read_json(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a valid stage config: expected a mapping, got {type(d).__name__}")
    d = {k: v for k, v in d.items() if k != "format_version"}
    if d.get("kind") == "suti-if":  # a DeepFloyd IF stage (suti.if_backbone)
        from .if_backbone.stage import IFStageConfig

        try:
            return IFStageConfig.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a valid SuTI-IF stage config: {e}") from e
    try:
        return StageConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a valid stage config: {e}") from e


def load_weights_strict(module: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path,
                        config_path: Path | None = None) -> None:
    """``module.load_state_dict(weights)``, refusing missing, unexpected or resized tensors and NaN/inf
    values with an error naming the weights file (and the config it was checked against)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    resized = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in weights.items()
               if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or resized:
        raise ValueError(f"{path} does not match {config_path or 'its config'}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape (file vs config) {resized[:5]}")
    bad = non_finite_tensors(weights)
    if bad:
        raise ValueError(f"{path}: {len(bad)} weight tensors hold NaN or inf (e.g. {', '.join(bad[:3])}); it was "
                         "saved from a diverged run")
    module.load_state_dict(weights)


def load_stage(folder, device="cpu", dtype: torch.dtype | None = None) -> Stage:
    folder = Path(folder)
    if getattr(load_stage_config(folder), "kind", None) == "suti-if":  # onto its IF base, fingerprint checked
        from .if_backbone.files import load_if_stage

        return load_if_stage(folder, device, dtype)
    stage = Stage(load_stage_config(folder))
    load_weights_strict(stage.unet, load_tensors(folder / "model.safetensors"), folder / "model.safetensors",
                        folder / "config.json")
    stage = stage.to(device)
    if dtype is not None:
        stage = stage.to(dtype)
    return stage.eval()


def save_cascade(cascade: Cascade, config: CascadeConfig, folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stage in cascade.stages:
        save_stage(stage, folder / stage.name)
    cfg = dict(config.to_dict(), stages=list(cascade.names), format_version=FORMAT_VERSION)
    atomic_write_json(folder / "cascade.json", cfg)
    return folder


def read_cascade_config(folder) -> CascadeConfig:
    path = Path(folder) / "cascade.json"
    try:
        return CascadeConfig.from_dict(read_json(path))
    except (TypeError, ValueError) as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path} is not a valid cascade config: {e}") from e


def load_cascade(folder, device="cpu", dtype=None, stages: list[str] | None = None) -> tuple[Cascade, CascadeConfig]:
    folder = Path(folder)
    cfg = read_cascade_config(folder)
    names = list(cfg.stages) if stages is None else list(stages)
    unknown = [n for n in names if n not in cfg.stages]
    if unknown:
        raise ValueError(f"{folder}: unknown stages {unknown}; the checkpoint has {list(cfg.stages)}")
    return Cascade([load_stage(folder / n, device, dtype) for n in names]), cfg
