"""CLIP embeddings of images and texts through open_clip.

`Embedder` wraps an open_clip model, its own evaluation preprocess and its
tokenizer. It returns float32 numpy arrays whose rows are L2-normalised, so
inner product = cosine similarity everywhere downstream (the FAISS index uses
inner product).

Loading:
- `Embedder.from_pretrained("ViT-B-32", pretrained="laion2b_s34b_b79k")`: built-in
  architecture + a pretrained tag (downloaded by open_clip) or a weights file path.
- `Embedder.from_pretrained("local-dir:/path")`: a folder with `open_clip_config.json`
  and weights (`open_clip_model.safetensors`, ...), as written by `save_pretrained`.
  Local weight files are loaded strictly by weights.py, never left random.
- `Embedder.from_config(cfg, name=...)`: an architecture dict (tiny test models).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .atomic import atomic_path, atomic_write_json
from .errors import DimensionMismatchError, ImageReadError, InvalidVectorError, ModelLoadError
from .images import open_image
from .vectors import as_matrix
from .weights import WEIGHT_SUFFIXES, find_weights, load_weights, weights_loaded_separately, weights_sha256

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
LOCAL_DIR = "local-dir:"
# progress=None shows a bar from this many inputs on.
AUTO_PROGRESS_MIN_ITEMS = 1000


def _open_clip():
    import open_clip  # deferred: importing open_clip pulls in torchvision and timm

    return open_clip


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}")
    return names[dtype]


def _image_key(item: Any, position: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    name = getattr(item, "filename", "") or ""
    return name if name else f"<image {position}>"


class Embedder:
    """open_clip model + preprocess + tokenizer, producing L2-normalised float32 embeddings."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable, *,
                 model_cfg: dict, preprocess_cfg: dict, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32, spec: dict | None = None,
                 name: str = "open_clip"):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_cfg = copy.deepcopy(model_cfg)
        self.preprocess_cfg = dict(preprocess_cfg)
        self.name = name
        # `spec` is what a database stores to reload this embedder by itself
        # ({"name": ..., "pretrained": ...}); None for unsaved config-built models.
        self.spec = spec
        self._device = torch.device(device)
        self._dtype = _resolve_dtype(dtype)
        self._fingerprint: str | None = None
        self._hash_before_lossy_cast(self._dtype)
        self.model.to(device=self._device, dtype=self._dtype)
        self.dim = int(self.model_cfg["embed_dim"])

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the model weights (names, shapes, float32 values); computed once.

        A PairsDatabase stores it and refuses an embedder whose weights differ.
        """
        if self._fingerprint is None:
            self._fingerprint = weights_sha256(self.model)
        return self._fingerprint

    @property
    def label(self) -> str:
        """How to name this model in messages: its load spec, else its registered name."""
        if self.spec and self.spec.get("pretrained"):
            return f"{self.spec['name']} (pretrained={self.spec['pretrained']})"
        return self.spec["name"] if self.spec else self.name

    def _hash_before_lossy_cast(self, dtype: torch.dtype) -> None:
        # fp32 -> fp16/bf16 rounds the weights; hash them first so a database built with
        # the fp32 model still recognises the same model loaded in half precision.
        if self._fingerprint is None and dtype != torch.float32 and any(
                p.dtype == torch.float32 for p in self.model.parameters()):
            self._fingerprint = weights_sha256(self.model)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32, cache_dir: str | None = None) -> "Embedder":
        """Load an open_clip model by `name` + `pretrained` tag/weights path, or from `local-dir:FOLDER`.

        Local weights (a local-dir: folder's file, or `pretrained` given as a file path)
        are read here, strictly: a missing, unreadable or mismatching file is an error
        naming it, never a silently random model.
        """
        open_clip = _open_clip()
        weights_file = None
        create_kwargs: dict = {}
        if name.startswith(LOCAL_DIR):
            folder = Path(name[len(LOCAL_DIR):]).expanduser().resolve()
            model_cfg, preprocess_cfg, weights_file = _read_local_dir(folder)
            if pretrained is not None:
                raise ValueError(f"pretrained={pretrained!r} cannot be combined with {name!r}: "
                                 "a local-dir: folder carries its own weights")
            model_name, spec = f"{LOCAL_DIR}{folder}", {"name": f"{LOCAL_DIR}{folder}", "pretrained": None}
            if "load_weights" in inspect.signature(open_clip.create_model_and_transforms).parameters:
                create_kwargs["load_weights"] = False  # loaded below, strictly (else loaded twice: harmless)
        elif name.startswith("hf-hub:"):
            model_name, spec, model_cfg, preprocess_cfg = name, {"name": name, "pretrained": None}, None, None
        else:
            if not pretrained:
                raise ValueError(
                    f"pretrained is required for {name!r}: a tag (see open_clip.list_pretrained()) or a weights "
                    "file path. Use Embedder.from_config for a randomly initialised model.")
            if name.replace("/", "-") not in open_clip.list_models():
                raise ValueError(f"unknown open_clip architecture {name!r}; known: {open_clip.list_models()[:8]}...")
            if os.path.isdir(pretrained):
                raise ValueError(f"pretrained={pretrained!r} is a folder; load it as 'local-dir:{pretrained}'")
            if Path(pretrained).suffix in WEIGHT_SUFFIXES:  # other files (e.g. big_vision .npz): open_clip
                weights_file = Path(pretrained).expanduser().resolve()
                if not weights_file.is_file():
                    raise FileNotFoundError(f"weights file not found: {weights_file}")
                pretrained = str(weights_file)
            elif os.path.exists(pretrained):
                pretrained = str(Path(pretrained).resolve())
            model_name, spec = name, {"name": name, "pretrained": pretrained}
            model_cfg, preprocess_cfg = open_clip.get_model_config(name), None
        quiet = weights_loaded_separately() if weights_file is not None else contextlib.nullcontext()
        try:
            with quiet:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=None if weights_file is not None or name.startswith("hf-hub:")
                    else pretrained, device="cpu", cache_dir=cache_dir, **create_kwargs)
        except Exception as exc:  # noqa: BLE001 - one clear error instead of open_clip's chain of tracebacks
            if isinstance(exc, (FileNotFoundError, ValueError)) and weights_file is not None:
                raise
            raise ModelLoadError(_load_failure(name, pretrained, exc)) from None
        if weights_file is not None:
            load_weights(model, weights_file, name)
        if model_cfg is None:  # hf-hub: the config came with the download
            model_cfg = open_clip.get_model_config(name)
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
        preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", preprocess_cfg or {}))
        return cls(model, preprocess, tokenizer, model_cfg=model_cfg, preprocess_cfg=preprocess_cfg,
                   device=device, dtype=dtype, spec=spec, name=name)

    @classmethod
    def from_config(cls, model_cfg: dict, name: str = "tiny-clip", state_dict: dict | None = None, *,
                    device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                    preprocess_cfg: dict | None = None) -> "Embedder":
        """Build a model from an open_clip architecture dict (registered as `name`).

        Weights are random unless `state_dict` is given. Used for tiny test models.
        """
        open_clip = _open_clip()
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
        if missing:
            raise ValueError(f"model_cfg for {name!r} lacks {missing}")
        known = open_clip.get_model_config(name) if name in open_clip.list_models() else None
        if known is not None and known != model_cfg:
            raise ValueError(f"name {name!r} is already registered in open_clip with a different config; "
                             "pick another name")
        with tempfile.TemporaryDirectory(prefix="retrieval-cfg-") as tmp:
            cfg_path = Path(tmp) / f"{name}.json"
            cfg_path.write_text(json.dumps(model_cfg))
            open_clip.add_model_config(cfg_path)  # the registry keeps the parsed dict after tmp is gone
        pp = preprocess_cfg or {}
        with weights_loaded_separately() if state_dict is not None else contextlib.nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None, device="cpu",
                image_mean=pp.get("mean"), image_std=pp.get("std"),
                image_interpolation=pp.get("interpolation"), image_resize_mode=pp.get("resize_mode"))
        if state_dict is not None:
            model.load_state_dict(state_dict, strict=True)
        tokenizer = open_clip.get_tokenizer(name)
        return cls(model, preprocess, tokenizer, model_cfg=model_cfg,
                   preprocess_cfg=dict(model.visual.preprocess_cfg), device=device, dtype=dtype,
                   spec=None, name=name)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write `open_clip_config.json` + `open_clip_model.safetensors` (the local-dir: layout)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", torch.float32).contiguous().clone()
                 for k, v in self.model.state_dict().items()}
        with atomic_path(folder / WEIGHTS_FILE) as tmp_weights:
            save_file(state, str(tmp_weights), metadata={"format": "pt"})
            os.chmod(tmp_weights, 0o644)  # safetensors creates the file owner-only; models are shared
        hf_tok = getattr(self.tokenizer, "tokenizer", None)
        if hf_tok is not None and hasattr(hf_tok, "save_pretrained"):
            hf_tok.save_pretrained(str(folder))  # open_clip reads HF tokenizers from the local dir
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": _jsonable(self.preprocess_cfg)}
        atomic_write_json(folder / CONFIG_FILE, config)
        return folder

    # --------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> "Embedder":
        """Move the model to another device and/or dtype; returns self."""
        if device is not None:
            self._device = torch.device(device)
        if dtype is not None:
            self._dtype = _resolve_dtype(dtype)
            self._hash_before_lossy_cast(self._dtype)
        self.model.to(device=self._device, dtype=self._dtype)
        return self

    # ---------------------------------------------------------------- embedding
    def embed_images(self, images: Sequence[Image.Image | str | os.PathLike | bytes], batch_size: int = 64,
                     progress: bool | None = None, on_error: str = "raise", num_workers: int | None = None,
                     keys: Sequence[str] | None = None):
        """Embed images (PIL images, paths, or encoded bytes) -> (N, dim) float32, rows L2-normalised.

        Any mode or size works: images go through `images.to_rgb` (EXIF orientation,
        alpha on white, 16-bit scaling) and then the model's own preprocess.
        on_error="raise": an unreadable image raises ImageReadError(path, reason).
        on_error="skip": returns (embeddings, kept_indices, skipped) where skipped is a
        list of (key, reason) and kept_indices the input positions of the rows.
        `keys` name the inputs in errors (default: the path, or "<image i>").
        Decoding and preprocessing run in `num_workers` threads (default min(8, CPUs)).
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(images, (str, os.PathLike, Image.Image, bytes)):
            raise TypeError("embed_images takes a sequence of images; wrap a single image in a list")
        items = list(images)
        if keys is not None and len(keys) != len(items):
            raise ValueError(f"got {len(keys)} keys for {len(items)} images")
        names = [str(keys[i]) if keys is not None else _image_key(item, i) for i, item in enumerate(items)]
        workers = num_workers or min(8, os.cpu_count() or 1)
        chunks: list[np.ndarray] = []
        kept: list[int] = []
        skipped: list[tuple[str, str]] = []

        def load(position: int):
            item = items[position]
            try:
                if not isinstance(item, (Image.Image, str, os.PathLike, bytes, bytearray)):
                    raise ImageReadError(names[position],
                                         f"expected a PIL image, a path or bytes, got {type(item).__name__}")
                rgb = open_image(item, name=names[position])
                try:
                    return self.preprocess(rgb), None
                except Exception as exc:  # e.g. a 0-pixel-wide image after EXIF handling
                    raise ImageReadError(names[position], f"preprocess failed: {type(exc).__name__}: {exc}") from exc
            except ImageReadError as exc:
                return None, exc

        bar = self._bar(len(items), progress, "embedding images")
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(items), batch_size):
                positions = range(start, min(start + batch_size, len(items)))
                tensors, batch_kept = [], []
                for position, (tensor, error) in zip(positions, pool.map(load, positions)):
                    if error is not None:
                        if on_error == "raise":
                            raise error
                        skipped.append((error.path, error.reason))
                        continue
                    tensors.append(tensor)
                    batch_kept.append(position)
                if tensors:
                    pixels = torch.stack(tensors).to(self._device, self._dtype)
                    with torch.inference_mode():
                        feats = self.model.encode_image(pixels)
                    chunks.append(self._normalised(feats, [names[p] for p in batch_kept]))
                    kept.extend(batch_kept)
                bar.update(len(positions))
        bar.close()
        out = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        if on_error == "skip":
            return out, np.asarray(kept, dtype=np.int64), skipped
        return out

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool | None = None) -> np.ndarray:
        """Embed texts -> (N, dim) float32, rows L2-normalised."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of strings; wrap a single text in a list")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        chunks = []
        bar = self._bar(len(texts), progress, "embedding texts")
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            tokens = self.tokenizer(batch).to(self._device)
            with torch.inference_mode():
                feats = self.model.encode_text(tokens)
            chunks.append(self._normalised(feats, [repr(t[:40]) for t in batch]))
            bar.update(len(batch))
        bar.close()
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    # ------------------------------------------------------------------ scoring
    def image_text_scores(self, image_emb, text_emb) -> np.ndarray:
        """Row-wise cosine similarity of paired image and text embeddings -> (N,)."""
        return self._rowwise_cosine(image_emb, text_emb, "image_emb", "text_emb")

    def image_image_scores(self, a, b) -> np.ndarray:
        """Row-wise cosine similarity of two sets of image embeddings -> (N,)."""
        return self._rowwise_cosine(a, b, "a", "b")

    def _rowwise_cosine(self, a, b, name_a: str, name_b: str) -> np.ndarray:
        a = as_matrix(a, self.dim, name_a, normalize=True)
        b = as_matrix(b, self.dim, name_b, normalize=True)
        if len(a) != len(b):
            raise DimensionMismatchError(f"{name_a} has {len(a)} rows but {name_b} has {len(b)}; "
                                         "row-wise scores need paired rows")
        return np.einsum("nd,nd->n", a, b).astype(np.float32)

    # ------------------------------------------------------------------ helpers
    def _normalised(self, feats: torch.Tensor, keys: list[str]) -> np.ndarray:
        feats = feats.float()
        bad = ~torch.isfinite(feats).all(dim=1)
        if bool(bad.any()):
            names = [keys[i] for i in torch.nonzero(bad).flatten().tolist()[:5]]
            raise InvalidVectorError(f"the model produced NaN/inf embeddings for {names} "
                                     f"(dtype {self._dtype}; try float32)")
        return F.normalize(feats, dim=-1).cpu().numpy().astype(np.float32, copy=False)

    @staticmethod
    def _bar(total: int, progress: bool | None, desc: str):
        show = total >= AUTO_PROGRESS_MIN_ITEMS if progress is None else bool(progress)
        return tqdm(total=total, desc=desc, unit="item", disable=not show)

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, dim={self.dim}, device={self._device}, dtype={self._dtype})"


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    return exc


def _load_failure(name: str, pretrained, exc: BaseException) -> str:
    """One message for a model that open_clip could not create: what failed, its root cause in one line,
    and how to load the same model offline."""
    cause = _root_cause(exc)
    text = " ".join(str(cause).split())
    text = f"{type(cause).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"
    download = any(w in " ".join(str(e) for e in (exc, cause)).lower()
                   for w in ("download", "connection", "internet", "hub", "resolve"))
    what = (f"its weights for pretrained tag {pretrained!r} are not on this machine and could not be downloaded"
            if download and pretrained else "open_clip could not create it")
    return (f"cannot load open_clip model {name!r} (pretrained={pretrained!r}): {what} ({text}). "
            "To work offline, point at local weights: Embedder.from_pretrained('local-dir:FOLDER') for a folder "
            "holding open_clip_config.json + open_clip_model.safetensors (written by Embedder.save_pretrained "
            "where the model was downloaded), or pretrained='/path/to/weights.safetensors' (.bin/.pt) for this "
            "architecture; on the command line: --model local-dir:FOLDER, or --pretrained /path/to/weights.")


def _read_local_dir(folder: Path) -> tuple[dict, dict, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"local-dir: folder not found: {folder}")
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"local-dir: folder {folder} has no {CONFIG_FILE}")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if "model_cfg" not in config:
        raise ValueError(f"{cfg_path} has no 'model_cfg' entry")
    # open_clip would silently build a random model without a weights file it knows.
    return config["model_cfg"], config.get("preprocess_cfg", {}), find_weights(folder)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
