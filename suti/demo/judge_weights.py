"""Saving and loading a WorldJudge: `config.json` + `model.safetensors` (float16) in a folder.

The shipped judge lives in the package (`suti/demo/assets/judge/`); `load_world_judge()` reads it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from retrieval.atomic import atomic_path, atomic_write_json

from .judges import JudgeConfig, WorldJudge

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_JUDGE = ASSETS / "judge"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_world_judge(judge: WorldJudge, folder: str | os.PathLike, metrics: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # float16 storage keeps the shipped assets small; weights load back into float32
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in judge.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o644)  # safetensors writes owner-only files; models are shared
    atomic_write_json(folder / CONFIG_FILE, {"model": "WorldJudge", "config": judge.config.to_dict(),
                                             "metrics": metrics or {}})
    return folder


def load_world_judge(folder: str | os.PathLike | None = None, device: str = "cpu") -> WorldJudge:
    """The judge in `folder` (default: the shipped one), in eval mode."""
    folder = Path(folder) if folder is not None else SHIPPED_JUDGE
    cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"world judge folder {folder} lacks {p.name} "
                                    "(train one: python -m suti.demo.train_judges --out FOLDER)")
    try:
        meta = json.loads(cfg_path.read_text())
        config = JudgeConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{cfg_path} is not a world judge config: {exc}") from exc
    judge = WorldJudge(config)
    try:
        judge.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise ValueError(f"{weights} does not match the judge config in {cfg_path}: {exc}") from exc
    return judge.to(torch.device(device)).eval()


def shipped_judge_metrics() -> dict:
    """The validation figures recorded when the shipped judge was trained."""
    return json.loads((SHIPPED_JUDGE / CONFIG_FILE).read_text()).get("metrics", {})


__all__ = ["save_world_judge", "load_world_judge", "shipped_judge_metrics", "SHIPPED_JUDGE", "ASSETS"]
