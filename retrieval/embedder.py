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
- `Embedder.from_config(cfg, name=...)`: an architecture dict (tiny test models).
"""

from __future__ import annotations

import copy
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

from .errors import DimensionMismatchError, ImageReadError, InvalidVectorError
from .images import open_image
from .vectors import as_matrix

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
        self.model.to(device=self._device, dtype=self._dtype)
        self.dim = int(self.model_cfg["embed_dim"])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32, cache_dir: str | None = None) -> "Embedder":
        """Load an open_clip model by `name` + `pretrained` tag/weights path, or from `local-dir:FOLDER`."""
        open_clip = _open_clip()
        if name.startswith(LOCAL_DIR):
            folder = Path(name[len(LOCAL_DIR):]).expanduser().resolve()
            model_cfg, preprocess_cfg = _read_local_dir(folder)
            if pretrained is not None:
                raise ValueError(f"pretrained={pretrained!r} cannot be combined with {name!r}: "
                                 "a local-dir: folder carries its own weights")
            model_name, spec = f"{LOCAL_DIR}{folder}", {"name": f"{LOCAL_DIR}{folder}", "pretrained": None}
        elif name.startswith("hf-hub:"):
            model_name, spec, model_cfg, preprocess_cfg = name, {"name": name, "pretrained": None}, None, None
        else:
            if not pretrained:
                raise ValueError(
                    f"pretrained is required for {name!r}: a tag (see open_clip.list_pretrained()) or a weights "
                    "file path. Use Embedder.from_config for a randomly initialised model.")
            if name.replace("/", "-") not in open_clip.list_models():
                raise ValueError(f"unknown open_clip architecture {name!r}; known: {open_clip.list_models()[:8]}...")
            if os.path.exists(pretrained):
                pretrained = str(Path(pretrained).resolve())
            model_name, spec = name, {"name": name, "pretrained": pretrained}
            model_cfg, preprocess_cfg = open_clip.get_model_config(name), None
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=None if name.startswith((LOCAL_DIR, "hf-hub:")) else pretrained,
                device="cpu", cache_dir=cache_dir)
        except (FileNotFoundError, ValueError):
            raise
        except Exception as exc:
            raise RuntimeError(
                f"could not load open_clip model {name!r} (pretrained={pretrained!r}): {exc}. "
                "Offline? Save the model once with Embedder.save_pretrained(folder) and load it "
                "with 'local-dir:folder'.") from exc
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
        tmp_weights = folder / f".{WEIGHTS_FILE}.tmp"
        save_file(state, str(tmp_weights), metadata={"format": "pt"})
        os.chmod(tmp_weights, 0o644)  # safetensors creates the file owner-only; models are shared
        os.replace(tmp_weights, folder / WEIGHTS_FILE)
        hf_tok = getattr(self.tokenizer, "tokenizer", None)
        if hf_tok is not None and hasattr(hf_tok, "save_pretrained"):
            hf_tok.save_pretrained(str(folder))  # open_clip reads HF tokenizers from the local dir
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": _jsonable(self.preprocess_cfg)}
        tmp_cfg = folder / f".{CONFIG_FILE}.tmp"
        tmp_cfg.write_text(json.dumps(config, indent=2))
        os.replace(tmp_cfg, folder / CONFIG_FILE)
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


def _read_local_dir(folder: Path) -> tuple[dict, dict]:
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
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt")]
    if not weights:
        # open_clip would silently build a random model here; for retrieval that is never wanted.
        raise FileNotFoundError(f"local-dir: folder {folder} has no weights file (expected {WEIGHTS_FILE})")
    return config["model_cfg"], config.get("preprocess_cfg", {})


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
