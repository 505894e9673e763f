"""Precomputed, memory-mapped text embeddings, so training never runs the text encoder.

A cache folder holds:

    embeddings.npy   (N, L, D) float16/float32, written through np.lib.format.open_memmap
    mask.npy         (N, L) bool
    captions.jsonl   one JSON string per line; line i is row i
    meta.json        encoder name, max_length, dim, dtype, count, sha1 of the caption list.
                     Written last and atomically: its presence means the cache is complete.
    progress.json    only while building: rows written so far (the resume point)

Captions are normalised with `normalize_caption` (surrounding whitespace stripped) both when
building and when looking up, so readers need not repeat it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from retrieval.atomic import atomic_write_json, atomic_write_text
from retrieval.shards import TAR_SUFFIXES, expand_pattern, expand_shard_patterns, iter_tar_samples

__all__ = [
    "CACHE_VERSION", "TextCacheError", "TextEmbeddingCache", "build_text_cache",
    "normalize_caption", "read_captions", "add_precompute_subparser", "run_text_cache",
]

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_NP_DTYPES = {"float16": np.float16, "float32": np.float32}
_SPEC_KEYS = ("version", "encoder", "max_length", "dim", "dtype", "count", "captions_sha1")


class TextCacheError(ValueError):
    """A cache folder that is incomplete, corrupt, or does not match the encoder in use."""


def normalize_caption(text: str) -> str:
    return text.strip()


def _captions_sha1(captions: Sequence[str]) -> str:
    h = hashlib.sha1()
    for c in captions:
        h.update(json.dumps(c, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _canonical_encoder_name(name: str) -> str:
    """Local folders compare by resolved path; hub names as given."""
    path = Path(str(name)).expanduser()
    return str(path.resolve()) if path.is_dir() else str(name)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise TextCacheError(f"cannot read {path}: {err}") from err


def _unique_captions(captions: Iterable[str]) -> list[str]:
    if isinstance(captions, (str, bytes)):
        raise TypeError("captions must be an iterable of strings, not a single string")
    seen: dict[str, None] = {}
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise TypeError(f"caption #{i} is {type(c).__name__}, expected str: {c!r}")
        seen.setdefault(normalize_caption(c), None)
    return list(seen)


# ---------------------------------------------------------------------------- building


def build_text_cache(encoder, captions: Iterable[str], folder, batch_size: int = 64,
                     dtype: str = "float16", progress: bool = True,
                     overwrite: bool = False) -> Path:
    """Encode the unique captions into a memory-mapped cache folder; returns the folder.

    Resumable: rows are flushed chunk by chunk and `progress.json` records how many are done,
    so a rerun after a crash continues where it stopped. A complete cache with the same
    captions and encoder is left as it is. A different complete cache in `folder` raises
    TextCacheError unless `overwrite=True`.
    """
    if dtype not in _NP_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_NP_DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    unique = _unique_captions(captions)
    if not unique:
        raise ValueError("no captions to encode")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n, length, dim = len(unique), int(encoder.max_length), int(encoder.dim)
    spec = {"version": CACHE_VERSION, "encoder": _canonical_encoder_name(encoder.name_or_path),
            "max_length": length, "dim": dim, "dtype": dtype, "count": n,
            "captions_sha1": _captions_sha1(unique)}
    meta_path, progress_path = folder / "meta.json", folder / "progress.json"
    emb_path, mask_path, captions_path = (folder / "embeddings.npy", folder / "mask.npy",
                                          folder / "captions.jsonl")

    if meta_path.exists():
        meta = _read_json(meta_path)
        differs = [k for k in _SPEC_KEYS if meta.get(k) != spec[k]]
        if not differs:
            log.info("text cache %s is complete (%d captions); not rebuilding", folder, n)
            return folder
        if not overwrite:
            raise TextCacheError(
                f"{folder} already holds a different complete text cache (differs in "
                f"{', '.join(differs)}); pass overwrite=True or choose another folder")
        meta_path.unlink()  # from here on the folder reads as incomplete

    rows_done = _resume_point(folder, spec)
    if rows_done:
        emb = np.lib.format.open_memmap(emb_path, mode="r+")
        mask = np.lib.format.open_memmap(mask_path, mode="r+")
        log.info("resuming text cache %s at row %d/%d", folder, rows_done, n)
    else:
        # Fresh files (new inodes), so any reader still mapping an old cache keeps its data.
        for stale in (progress_path, emb_path, mask_path):
            stale.unlink(missing_ok=True)
        atomic_write_text(captions_path, "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in unique))
        emb = np.lib.format.open_memmap(emb_path, mode="w+", dtype=_NP_DTYPES[dtype], shape=(n, length, dim))
        mask = np.lib.format.open_memmap(mask_path, mode="w+", dtype=np.bool_, shape=(n, length))
        atomic_write_json(progress_path, {"spec": spec, "rows_done": 0})

    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=rows_done, unit="caption", desc="text cache", disable=not progress)
    try:
        for start in range(rows_done, n, batch_size):
            chunk = unique[start:start + batch_size]
            e, m = encoder.encode(chunk)
            e = e.detach().float().cpu().numpy()
            with np.errstate(over="ignore"):  # overflow is reported just below, with the caption
                stored = e.astype(_NP_DTYPES[dtype])
            if not np.isfinite(stored).all():
                bad = chunk[int(np.flatnonzero(~np.isfinite(stored).reshape(len(chunk), -1).all(1))[0])]
                raise TextCacheError(f"embedding of caption {bad!r} is not finite in {dtype} "
                                     f"(max |x| = {np.abs(e).max():.3g}); build with dtype='float32'")
            emb[start:start + len(chunk)] = stored
            mask[start:start + len(chunk)] = m.cpu().numpy()
            emb.flush()
            mask.flush()
            atomic_write_json(progress_path, {"spec": spec, "rows_done": start + len(chunk)})
            bar.update(len(chunk))
    finally:
        bar.close()
    del emb, mask
    atomic_write_json(meta_path, {**spec, "model_type": getattr(encoder, "model_type", None)})
    progress_path.unlink(missing_ok=True)
    return folder


def _resume_point(folder: Path, spec: dict) -> int:
    """Rows already written by an interrupted build with the same spec; 0 to start afresh."""
    try:
        state = _read_json(folder / "progress.json")
        if state.get("spec") != spec:
            return 0
        if _captions_file_sha1(folder / "captions.jsonl") != spec["captions_sha1"]:
            return 0
        emb = np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
        mask = np.load(folder / "mask.npy", mmap_mode="r", allow_pickle=False)
        n, length, dim = spec["count"], spec["max_length"], spec["dim"]
        if (emb.shape != (n, length, dim) or emb.dtype != _NP_DTYPES[spec["dtype"]]
                or mask.shape != (n, length) or mask.dtype != np.bool_):
            return 0
        return min(int(state["rows_done"]), n)
    except (TextCacheError, OSError, ValueError, KeyError, TypeError):
        return 0  # missing or damaged pieces: rebuild from scratch


def _captions_file_sha1(path: Path) -> str:
    return _captions_sha1(_read_captions_file(path))


def _read_captions_file(path: Path) -> list[str]:
    captions = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                captions.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TextCacheError(f"{path}:{lineno}: corrupt caption line: {err}") from err
    return captions


# ---------------------------------------------------------------------------- reading


class TextEmbeddingCache:
    """Read side of a text cache: memory-mapped arrays plus a caption -> row index."""

    def __init__(self, folder, meta: dict, embeddings: np.ndarray, mask: np.ndarray,
                 captions: list[str]):
        self.folder = Path(folder)
        self.meta = meta
        self._emb = embeddings
        self._mask = mask
        self.captions = captions
        self._row = {c: i for i, c in enumerate(captions)}

    @classmethod
    def open(cls, folder) -> "TextEmbeddingCache":
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            progress = folder / "progress.json"
            if progress.exists():
                state = _read_json(progress)
                raise TextCacheError(
                    f"text cache {folder} is incomplete ({state.get('rows_done')}/"
                    f"{state.get('spec', {}).get('count')} rows); rerun build_text_cache to finish it")
            raise TextCacheError(f"{folder} is not a text cache (no meta.json)")
        meta = _read_json(meta_path)
        if meta.get("version") != CACHE_VERSION:
            raise TextCacheError(f"text cache {folder} has version {meta.get('version')}, "
                                 f"this code reads version {CACHE_VERSION}")
        try:
            emb = np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
            mask = np.load(folder / "mask.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise TextCacheError(f"cannot memory-map the arrays of text cache {folder}: {err}") from err
        captions = _read_captions_file(folder / "captions.jsonl")
        n, length, dim = meta["count"], meta["max_length"], meta["dim"]
        if emb.shape != (n, length, dim) or mask.shape != (n, length) or len(captions) != n:
            raise TextCacheError(
                f"text cache {folder} is inconsistent: embeddings {emb.shape}, mask {mask.shape}, "
                f"{len(captions)} captions, meta says count={n} max_length={length} dim={dim}")
        if str(emb.dtype) != meta["dtype"]:
            raise TextCacheError(f"text cache {folder}: embeddings are {emb.dtype}, meta says {meta['dtype']}")
        return cls(folder, meta, emb, mask, captions)

    # Worker processes get a fresh memory map instead of a pickled copy of the arrays.
    def __getstate__(self):
        return {"folder": str(self.folder)}

    def __setstate__(self, state):
        other = type(self).open(state["folder"])
        self.__dict__.update(other.__dict__)

    @property
    def encoder_name(self) -> str:
        return self.meta["encoder"]

    @property
    def max_length(self) -> int:
        return int(self.meta["max_length"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def __len__(self) -> int:
        return len(self.captions)

    def __contains__(self, caption) -> bool:
        return isinstance(caption, str) and normalize_caption(caption) in self._row

    def rows(self, captions: Sequence[str]) -> list[int]:
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, not a single string")
        out = []
        for c in captions:
            if not isinstance(c, str):
                raise TypeError(f"caption {c!r} is {type(c).__name__}, expected str")
            row = self._row.get(normalize_caption(c))
            if row is None:
                raise KeyError(f"caption not in text cache {self.folder}: {c!r}")
            out.append(row)
        return out

    def lookup(self, captions: Sequence[str], dtype: torch.dtype = torch.float32,
               device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (B, L, D) as `dtype`, mask (B, L) bool) for the given captions."""
        rows = self.rows(captions)
        emb = torch.from_numpy(np.ascontiguousarray(self._emb[rows])).to(device=device, dtype=dtype)
        mask = torch.from_numpy(np.ascontiguousarray(self._mask[rows])).to(device=device)
        return emb, mask

    def check_compatible(self, encoder_name: str | None, max_length: int, dim: int) -> None:
        """Raise TextCacheError unless the cache was built by this encoder configuration.

        `encoder_name=None` skips the name check (e.g. the same weights saved under a new folder).
        """
        problems = []
        if encoder_name is not None and _canonical_encoder_name(encoder_name) != self.encoder_name:
            problems.append(f"encoder {self.encoder_name!r} != {_canonical_encoder_name(encoder_name)!r}")
        if int(max_length) != self.max_length:
            problems.append(f"max_length {self.max_length} != {max_length}")
        if int(dim) != self.dim:
            problems.append(f"dim {self.dim} != {dim}")
        if problems:
            raise TextCacheError(f"text cache {self.folder} does not match the text encoder: "
                                 + "; ".join(problems))

    def verify(self, encoder, n: int = 2, atol: float = 2e-2) -> None:
        """Re-encode `n` cached captions and compare: catches different weights under one name."""
        self.check_compatible(encoder.name_or_path, encoder.max_length, encoder.dim)
        probe = self.captions[: max(1, n)]
        fresh, fresh_mask = encoder.encode(probe)
        cached, cached_mask = self.lookup(probe)
        err = (fresh.float().cpu() - cached).abs().max().item()
        scale = cached.abs().max().item()
        if not torch.equal(fresh_mask.cpu(), cached_mask) or err > atol * max(1.0, scale):
            raise TextCacheError(f"text cache {self.folder} does not reproduce encoder output "
                                 f"(max abs diff {err:.3g}); it was built with other weights")


# ---------------------------------------------------------------------------- caption sources

_TEXT_EXT = re.compile(r"(txt|target\.txt|ex\d+\.txt)")


def _expand(source) -> list[Path]:
    if isinstance(source, Path):
        patterns = [str(source)]
    else:
        try:
            patterns = expand_pattern(source)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"caption source pattern matched no files: {source} ({err})") from None
    for pattern in patterns:
        if not os.path.exists(pattern):
            raise FileNotFoundError(f"caption source not found: {pattern}")
    return [Path(p) for p in patterns]


def _caption_of(record, where: str, report: Counter):
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for field in ("caption", "text"):
            if isinstance(record.get(field), str):
                return record[field]
    report[f"record without a string 'caption'/'text' field ({where})"] += 1
    return None


def _read_txt(path: Path, report: Counter) -> list[str]:
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                caption = normalize_caption(line)
                if caption:
                    out.append(caption)
                else:
                    report["blank line in .txt"] += 1
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err}") from err
    return out


def _read_jsonl(path: Path, report: Counter) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                report["blank line in .jsonl"] += 1
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {err}") from err
            caption = _caption_of(record, ".jsonl", report)
            if caption is not None:
                out.append(normalize_caption(caption))
    return out


def _read_json_file(path: Path, report: Counter) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("captions"), list):
        data = data["captions"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of captions/records or {{'captions': [...]}}")
    out = []
    for record in data:
        caption = _caption_of(record, ".json", report)
        if caption is not None:
            out.append(normalize_caption(caption))
    return out


def _read_shard(path: Path, report: Counter) -> list[str]:
    """Caption members of a webdataset shard: `{key}.txt`, `{key}.target.txt`, `{key}.exN.txt`. Shard problems
    (torn, corrupt, duplicate keys, odd members: retrieval.shards) are counted in `report`, naming the file;
    a file that is not a tar at all raises ValueError."""
    out = []

    def problem(p):
        if p.reason == "unreadable":  # not a tar at all: the source list is wrong, not one record
            raise ValueError(f"{path}: not a readable tar shard: {p.detail}")
        report[f"tar {p.reason} ({path})"] += 1

    for sample in iter_tar_samples(path, problem):
        for ext, raw in sample.members.items():
            if not ext.endswith("txt"):
                continue
            if not _TEXT_EXT.fullmatch(ext):
                report[f"other .txt member ignored ({ext})"] += 1
                continue
            try:
                out.append(normalize_caption(raw.decode("utf-8")))
            except UnicodeDecodeError:
                report["non-UTF-8 caption member"] += 1
    return out


def read_captions(source, report: Counter | None = None) -> list[str]:
    """Captions, in order and with duplicates, from one source or a list of sources.

    A source is a .txt file (one caption per line), a .jsonl/.json file (field "caption" or
    "text", or plain strings), a webdataset .tar shard, or a folder of shards. Glob patterns
    and brace ranges (`shard-{000000..000009}.tar`) are expanded. Skipped records are counted
    in `report` (a Counter, reason -> count) and logged.
    """
    report = Counter() if report is None else report
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    captions: list[str] = []
    for src in sources:
        for path in _expand(src):
            if path.is_dir() or path.name.endswith(TAR_SUFFIXES):
                try:
                    shards = expand_shard_patterns(path)
                except FileNotFoundError as err:
                    raise FileNotFoundError(f"caption folder {path} holds no .tar shards") from err
                for shard in shards:
                    captions.extend(_read_shard(shard, report))
            elif path.suffix == ".txt":
                captions.extend(_read_txt(path, report))
            elif path.suffix == ".jsonl":
                captions.extend(_read_jsonl(path, report))
            elif path.suffix == ".json":
                captions.extend(_read_json_file(path, report))
            else:
                raise ValueError(f"unsupported caption source {path}: expected .txt, .jsonl, "
                                 ".json, .tar shard(s) or a folder of shards")
    for reason, count in report.items():
        log.warning("read_captions skipped %d: %s", count, reason)
    return captions


# ---------------------------------------------------------------------------- CLI


def add_precompute_subparser(subparsers) -> argparse.ArgumentParser:
    """Register `text-cache` on an argparse subparsers object; the handler is `args.func`."""
    p = subparsers.add_parser(
        "text-cache", help="precompute a memory-mapped text embedding cache",
        description="Encode every unique caption once with a frozen text encoder and store "
                    "the embeddings memory-mapped for training. Resumes if interrupted.")
    p.add_argument("--encoder", required=True, help="Hugging Face name or local folder")
    p.add_argument("--captions", required=True, nargs="+",
                   help=".txt / .jsonl / .json files, .tar shards, shard folders, globs or "
                        "brace ranges like 'shards/{000000..000009}.tar'")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dtype", choices=sorted(_NP_DTYPES), default="float16",
                   help="storage dtype of the cached embeddings")
    p.add_argument("--encoder-dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--overwrite", action="store_true", help="replace a different existing cache")
    p.set_defaults(func=run_text_cache)
    return p


def run_text_cache(args) -> int:
    from suti.text import TextEncoder

    report: Counter = Counter()
    captions = read_captions(args.captions, report)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = TextEncoder.from_pretrained(args.encoder, max_length=args.max_length,
                                          dtype=args.encoder_dtype, device=device)
    folder = build_text_cache(encoder, captions, args.out, batch_size=args.batch_size,
                              dtype=args.dtype, overwrite=args.overwrite)
    cache = TextEmbeddingCache.open(folder)
    print(json.dumps({"folder": str(folder), "captions_read": len(captions), "unique": len(cache),
                      "max_length": cache.max_length, "dim": cache.dim, "dtype": cache.meta["dtype"],
                      "skipped": dict(report)}, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suti.text_cache")
    sub = parser.add_subparsers(dest="command", required=True)
    add_precompute_subparser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
