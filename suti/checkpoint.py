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

from .cascade import Cascade, Stage
from .config import CascadeConfig, StageConfig

FORMAT_VERSION = 1


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk, then rename it over ``path``: after a power cut, the old file or the new one."""
    _fsync(tmp)
    os.replace(tmp, path)
    if os.name == "posix":
        _fsync(path.parent)  # the rename itself


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    _replace(tmp, path)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    _replace(tmp, path)


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
        _fsync(final.parent)
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
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from e


def save_stage(stage: Stage, folder, state_dict: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors``. ``state_dict`` overrides the weights (e.g. EMA).

    The two files are written into a fresh sibling folder that then replaces ``folder`` whole, so weights
    and config always come from the same save."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    atomic_save_tensors(state_dict if state_dict is not None else stage.unet.state_dict(), tmp / "model.safetensors",
                        metadata={"format": "suti-stage", "version": str(FORMAT_VERSION)})
    cfg = {"format_version": FORMAT_VERSION, **stage.config.to_dict()}
    atomic_write_text(tmp / "config.json", json.dumps(cfg, indent=2))
    return swap_folder(tmp, folder)


def load_stage_config(folder) -> StageConfig:
    d = read_json(Path(folder) / "config.json")
    d.pop("format_version", None)
    try:
        return StageConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{Path(folder) / 'config.json'} is not a valid stage config: {e}") from e


def load_stage(folder, device="cpu", dtype: torch.dtype | None = None) -> Stage:
    folder = Path(folder)
    stage = Stage(load_stage_config(folder))
    weights = load_tensors(folder / "model.safetensors")
    expected = stage.unet.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    resized = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in weights.items()
               if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or resized:
        raise ValueError(f"{folder / 'model.safetensors'} does not match {folder / 'config.json'}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape (file vs config) {resized[:5]}")
    stage.unet.load_state_dict(weights)
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
    atomic_write_text(folder / "cascade.json", json.dumps(cfg, indent=2))
    return folder


def load_cascade(folder, device="cpu", dtype=None, stages: list[str] | None = None) -> tuple[Cascade, CascadeConfig]:
    folder = Path(folder)
    cfg = CascadeConfig.from_dict(read_json(folder / "cascade.json"))
    names = list(cfg.stages) if stages is None else list(stages)
    unknown = [n for n in names if n not in cfg.stages]
    if unknown:
        raise ValueError(f"{folder}: unknown stages {unknown}; the checkpoint has {list(cfg.stages)}")
    return Cascade([load_stage(folder / n, device, dtype) for n in names]), cfg
