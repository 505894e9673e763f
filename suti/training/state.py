"""Training checkpoints: safetensors + JSON only (no pickle), written atomically, last N kept.

    <run>/checkpoints/step-00001000/
        model/  config.json model.safetensors       raw weights (a loadable stage folder)
        ema/    config.json model.safetensors       EMA weights (a loadable stage folder)
        optimizer.safetensors  optimizer.json       optimizer state tensors; param_groups + scalars
        trainer_state.json                          step, LR schedule, nan-skips, EMA counters, scaler,
                                                    world size, the training config
        rank-00000.safetensors rank-00000.json      per process: RNG states, data position, skip stats

A checkpoint is assembled in ``.step-XXXXXXXX.partial`` and renamed into place once complete, so a
crash leaves either the previous set of checkpoints or the new one, never a torn folder.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from retrieval.atomic import atomic_write_json

from ..checkpoint import atomic_save_tensors, load_tensors, read_json, swap_folder

CHECKPOINT_FORMAT = "suti-train-checkpoint"
CHECKPOINT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


# ----------------------------------------------------------------------------- optimizer state
def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    raise TypeError(f"cannot store optimizer value {v!r} ({type(v).__name__}) as JSON")


def flatten_optimizer_state(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` -> (tensors ``state.<param id>.<name>``, JSON for the rest)."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = v
            else:
                scalars.setdefault(str(pid), {})[name] = _jsonable(v)
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict, like: dict) -> dict:
    """Inverse of ``flatten_optimizer_state``; ``like`` (the live optimizer's state_dict) restores tuples."""
    state: dict = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = []
    if len(meta["param_groups"]) != len(like["param_groups"]):
        raise ValueError(f"checkpoint has {len(meta['param_groups'])} optimizer param groups, "
                         f"the optimizer has {len(like['param_groups'])}")
    for saved, live in zip(meta["param_groups"], like["param_groups"]):
        g = dict(saved)
        for k, v in g.items():
            if isinstance(live.get(k), tuple) and isinstance(v, list):
                g[k] = tuple(v)
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------- RNG state
def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    """Global RNG states (torch CPU, CUDA, numpy, python) as uint8 tensors + JSON."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.ascontiguousarray(keys, dtype=np.uint32).view(np.uint8).copy())
    version, py_state, gauss_next = random.getstate()
    meta = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next}}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda"))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    n = meta["numpy"]
    keys = tensors["numpy_keys"].numpy().view(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = meta["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# ----------------------------------------------------------------------------- folders
def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a trainer_state.json), oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def partial_dir(run_dir, step: int) -> Path:
    return checkpoints_dir(run_dir) / f".{step_dir_name(step)}.partial"


def prepare_partial(run_dir, step: int) -> Path:
    """(main process) A fresh, empty folder to assemble checkpoint ``step`` in."""
    tmp = partial_dir(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash during an earlier save
    tmp.mkdir(parents=True)
    return tmp


def commit_partial(run_dir, step: int, keep_last: int | None) -> Path:
    """(main process) Move the assembled checkpoint into place; drop all but the newest ``keep_last``."""
    tmp, final = partial_dir(run_dir, step), checkpoints_dir(run_dir) / step_dir_name(step)
    if not (tmp / "trainer_state.json").is_file():
        raise RuntimeError(f"checkpoint {tmp} is incomplete (no trainer_state.json); not committing")
    swap_folder(tmp, final)  # re-saving the same step (e.g. after resuming from it) replaces it whole
    if keep_last:
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- files
def write_json(path: Path, obj) -> None:
    atomic_write_json(path, obj)


def _need(ok: bool, path: Path, message: str) -> None:
    if not ok:
        raise ValueError(f"{path}: {message}")


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_trainer_state(folder: Path) -> dict:
    """``trainer_state.json`` of a checkpoint, checked field by field; errors name the file."""
    path = Path(folder) / "trainer_state.json"
    st = read_json(path)
    _need(isinstance(st, dict), path, f"expected a JSON object, got {type(st).__name__}")
    _need(st.get("format") == CHECKPOINT_FORMAT, path, f"format is {st.get('format')!r}, not {CHECKPOINT_FORMAT!r} "
          "(not a suti training checkpoint)")
    _need(_count(st.get("step")), path, f"step must be an integer >= 0, got {st.get('step')!r}")
    m = _STEP_DIR.match(Path(folder).name)
    _need(m is None or int(m.group(1)) == st["step"], path, f"step {st['step']} does not match the folder name")
    _need(_count(st.get("nan_skips", 0)), path, f"nan_skips must be an integer >= 0, got {st.get('nan_skips')!r}")
    _need(_count(st.get("world_size", 1)) and st.get("world_size", 1) >= 1, path,
          f"world_size must be an integer >= 1, got {st.get('world_size')!r}")
    ema = st.get("ema")
    _need(ema is None or isinstance(ema, dict) and _count(ema.get("num_updates")), path,
          f"ema must be null or hold an integer num_updates >= 0, got {ema!r}")
    _need(st.get("scaler") is None or isinstance(st["scaler"], dict), path, "scaler must be null or an object")
    _need(isinstance(st.get("config", {}), dict), path, "config must be an object")
    return st


def verify_checkpoint(folder: Path) -> dict:
    """Read every file a resume needs (headers of the weight files, all JSON), so a torn or edited checkpoint
    is found before anything is loaded from it. Returns the trainer state."""
    from safetensors import safe_open

    folder = Path(folder)
    st = read_trainer_state(folder)
    ranks = range(st.get("world_size", 1))
    # A stage folder's weights: model.safetensors, or context.safetensors for an IF stage (suti.if_backbone).
    weights = lambda sub: sorted((folder / sub).glob("*.safetensors")) or [folder / sub / "model.safetensors"]  # noqa: E731
    files = [*weights("model"), folder / "optimizer.safetensors",
             *(folder / f"rank-{r:05d}.safetensors" for r in ranks)]
    if st.get("ema"):
        files.extend(weights("ema"))
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a torn file
            raise ValueError(f"cannot read safetensors file {path}: {e}") from e
    for path in (folder / "model" / "config.json", folder / "optimizer.json", *(folder / f"rank-{r:05d}.json"
                                                                                for r in ranks)):
        read_json(path)
    return st


def save_optimizer(folder: Path, optimizer) -> None:
    tensors, meta = flatten_optimizer_state(optimizer.state_dict())
    atomic_save_tensors(tensors, folder / "optimizer.safetensors", metadata={"format": CHECKPOINT_FORMAT})
    write_json(folder / "optimizer.json", meta)


def load_optimizer(folder: Path, optimizer, device="cpu") -> None:
    tensors = load_tensors(folder / "optimizer.safetensors", device="cpu")
    sd = unflatten_optimizer_state(tensors, read_json(folder / "optimizer.json"), optimizer.state_dict())
    optimizer.load_state_dict(sd)


def save_rank_state(folder: Path, rank: int, extra: dict) -> None:
    """RNG states + ``extra`` (data position, skip stats) of one process."""
    tensors, meta = capture_rng()
    atomic_save_tensors(tensors, folder / f"rank-{rank:05d}.safetensors", metadata={"format": CHECKPOINT_FORMAT})
    write_json(folder / f"rank-{rank:05d}.json", {"rng": meta, **extra})


def load_rank_state(folder: Path, rank: int, restore: bool = True) -> dict:
    path = folder / f"rank-{rank:05d}.json"
    meta = read_json(path)
    if restore:
        restore_rng(load_tensors(folder / f"rank-{rank:05d}.safetensors"), meta["rng"])
    return meta


def assert_no_pickle(folder: Path) -> None:
    """Every file of a checkpoint is safetensors or JSON (used by tests and as a self-check)."""
    for p in Path(folder).rglob("*"):
        if p.is_file() and p.suffix not in (".safetensors", ".json"):
            raise AssertionError(f"unexpected file type in checkpoint: {p}")
