"""On-disk spill files: frames of (JSON metadata, blob), plus the sorted run files of the ingest phase.

A frame is <u32 meta length><u32 blob length><meta JSON UTF-8><blob>. No pickle: metadata is JSON, arrays .npy.
Every file is written through retrieval.atomic, so a killed run never leaves a half file in place.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
from retrieval.atomic import atomic_path, atomic_write_bytes

from .records import Record

_HEADER = struct.Struct("<II")


def encode_frame(meta: dict, blob: bytes) -> bytes:
    m = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _HEADER.pack(len(m), len(blob)) + m + blob


def iter_frames(data: bytes, path: str = "<bytes>") -> Iterator[tuple[dict, bytes]]:
    pos, end = 0, len(data)
    while pos < end:
        if pos + _HEADER.size > end:
            raise ValueError(f"spill file {path} is cut inside a frame header at byte {pos}")
        mlen, blen = _HEADER.unpack_from(data, pos)
        pos += _HEADER.size
        if pos + mlen + blen > end:
            raise ValueError(f"spill file {path} is cut inside a frame at byte {pos}")
        meta = json.loads(data[pos:pos + mlen].decode("utf-8"))
        pos += mlen
        yield meta, data[pos:pos + blen]
        pos += blen


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr, allow_pickle=False)


def load_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


# --- ingest runs ----------------------------------------------------------------------------------------------
# A run holds up to run_size records sorted by (page_hash, key). Beside it:
#   run.idx.npy     (n, 2) uint64: page_hash, byte offset of the frame   -> read one partition's slice
#   run.hashes.npy  (n, 2) uint64: content_hash, page_hash, sorted        -> boilerplate counting per hash range

def write_run(folder: Path, run_index: int, records: list[Record]) -> None:
    records = sorted(records, key=lambda r: (r.page_hash, r.key))
    frames, offsets, pos = [], [], 0
    for r in records:
        fr = encode_frame(r.meta(), r.image)
        offsets.append(pos)
        frames.append(fr)
        pos += len(fr)
    stem = folder / f"run-{run_index:05d}"
    atomic_write_bytes(stem.with_suffix(".bin"), b"".join(frames))
    idx = np.array([[r.page_hash, o] for r, o in zip(records, offsets)], dtype=np.uint64).reshape(-1, 2)
    atomic_save_npy(f"{stem}.idx.npy", idx)
    hashes = np.array([[r.content_hash, r.page_hash] for r in records], dtype=np.uint64).reshape(-1, 2)
    order = np.lexsort((hashes[:, 1], hashes[:, 0])) if len(hashes) else np.zeros(0, dtype=np.int64)
    atomic_save_npy(f"{stem}.hashes.npy", hashes[order])


def list_runs(folder: Path) -> list[Path]:
    return sorted(folder.glob("run-*.bin"))


def hash_range(part: int, num_parts: int) -> tuple[int, int]:
    """[lo, hi) of the 64-bit hash space for partition `part` (hi may be 2**64)."""
    lo = -((-part << 64) // num_parts)  # ceil(part * 2**64 / num_parts)
    hi = -((-(part + 1) << 64) // num_parts)
    return lo, hi


def _searchsorted_u64(values: np.ndarray, bound: int) -> int:
    if bound >= 2**64:
        return len(values)
    return int(np.searchsorted(values, np.uint64(bound), side="left"))


def _idx(run_bin: Path) -> np.ndarray:
    return load_npy(str(run_bin)[:-4] + ".idx.npy", mmap=True)


def read_run_pages(run_bin: Path, lo: int, hi: int) -> np.ndarray:
    """The page hash of every record of a run in [lo, hi), from the index alone (no frame is read)."""
    idx = _idx(run_bin)
    if len(idx) == 0:
        return np.zeros(0, dtype=np.uint64)
    return np.array(idx[_searchsorted_u64(idx[:, 0], lo):_searchsorted_u64(idx[:, 0], hi), 0], dtype=np.uint64)


def read_run_partition(run_bin: Path, lo: int, hi: int, skip_pages: np.ndarray | None = None) -> list[Record]:
    """The records of a run whose page hash lies in [lo, hi) and not in `skip_pages`: one seek and one
    contiguous read per stretch of wanted records (a run is sorted by page, so a skipped page is one gap)."""
    idx = _idx(run_bin)
    if len(idx) == 0:
        return []
    a, b = _searchsorted_u64(idx[:, 0], lo), _searchsorted_u64(idx[:, 0], hi)
    if a >= b:
        return []
    keep = np.ones(b - a, dtype=bool)
    if skip_pages is not None and len(skip_pages):
        keep = ~np.isin(np.asarray(idx[a:b, 0]), skip_pages)
    edges = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))
    out: list[Record] = []
    with open(run_bin, "rb") as f:
        for s, e in zip(np.nonzero(edges == 1)[0] + a, np.nonzero(edges == -1)[0] + a):
            start = int(idx[s, 1])
            end = int(idx[e, 1]) if e < len(idx) else os.path.getsize(run_bin)
            f.seek(start)
            data = f.read(end - start)
            out.extend(Record.from_meta(m, blob) for m, blob in iter_frames(data, str(run_bin)))
    return out


def read_run_hashes(run_bin: Path, lo: int, hi: int) -> np.ndarray:
    h = load_npy(str(run_bin)[:-4] + ".hashes.npy", mmap=True)
    if len(h) == 0:
        return np.zeros((0, 2), dtype=np.uint64)
    a, b = _searchsorted_u64(h[:, 0], lo), _searchsorted_u64(h[:, 0], hi)
    return np.array(h[a:b])
