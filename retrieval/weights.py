"""Reading open_clip weights files strictly and without pickle, and fingerprinting weights.

open_clip builds a randomly initialised model, with only a log warning, when a
`local-dir:` folder holds no weights file it recognises (it ignores `.pt`). A
random CLIP is never what a retrieval user wants, so local folders and local
weight files are loaded here instead: safetensors, or `.bin`/`.pth`/`.pt`
through `torch.load(weights_only=True)` (no arbitrary pickle), into the model
with strict=True. Every failure is a ModelLoadError (or FileNotFoundError)
naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import torch

from .errors import ModelLoadError, clean_reason

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# open_clip's own preference order for files in a local-dir: folder, plus model.pt.
PREFERRED_NAMES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
    "model.pt",
)


def find_weights(folder: Path) -> Path:
    """The weights file of a local-dir: folder (FileNotFoundError / ModelLoadError when none or ambiguous)."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"local-dir: folder {folder} has no weights file (expected {PREFERRED_NAMES[0]}; "
                                f"files ending in {', '.join(WEIGHT_SUFFIXES)} are read)")
    for name in PREFERRED_NAMES:
        if folder / name in files:
            return folder / name
    if len(files) > 1:
        raise ModelLoadError(f"local-dir: folder {folder} holds several weights files "
                             f"({', '.join(p.name for p in files)}); keep one, or name the right one "
                             f"{PREFERRED_NAMES[0]}")
    return files[0]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, unwrapped from {"state_dict": ...} and DataParallel's "module." prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, zipfile, pickle (weights_only refusal) errors all land here
        detail = clean_reason(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
        how = "safetensors" if path.suffix == ".safetensors" else "torch.load(weights_only=True)"
        raise ModelLoadError(f"cannot read weights file {path} with {how}: {type(exc).__name__}"
                             + (f": {detail[:300]}" if detail else "")) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelLoadError(f"weights file {path} does not hold a state dict of named tensors "
                             f"(found {type(state).__name__})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: torch.nn.Module, path: Path, model_name: str) -> None:
    """Load `path` into `model` with strict=True; a mismatch names the file and the keys."""
    state = read_state_dict(path)
    expected = model.state_dict()
    # The same two shape fixes open_clip applies when it loads a checkpoint.
    for name in ("logit_scale", "logit_bias"):
        if (name in state and name in expected and state[name].shape != expected[name].shape
                and state[name].numel() == expected[name].numel()):
            state[name] = state[name].reshape(expected[name].shape)
    position_ids = "text.transformer.embeddings.position_ids"  # dropped by newer transformers
    if position_ids not in expected:
        state.pop(position_ids, None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        def some(keys):
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({some(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({some(unexpected)})")
        if wrong:
            first = wrong[0]
            problems.append(f"{len(wrong)} of the wrong shape ({some(wrong)}; {first} is "
                            f"{tuple(state[first].shape)}, the model expects {tuple(expected[first].shape)})")
        raise ModelLoadError(f"weights file {path} does not match the architecture of {model_name}: "
                             f"tensors {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict: names, shapes and float32 values, in name order.

    float32 is the canonical form so a model stored in fp16 hashes the same after
    loading in fp32; callers hash before any lossy cast (see Embedder).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().to("cpu", torch.float32).contiguous().reshape(-1).numpy()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(values)
    return digest.hexdigest()


class _DropRandomInitWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("initialized randomly" in text or "no CLIP weights found" in text)


@contextlib.contextmanager
def weights_loaded_separately():
    """Silence open_clip's "model initialized randomly" warnings while it builds a model
    whose weights we load ourselves right after (they would be false alarms)."""
    flt = _DropRandomInitWarnings()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)
