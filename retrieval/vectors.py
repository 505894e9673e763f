"""Validation of embedding matrices shared by the index, database and embedder."""

from __future__ import annotations

import numpy as np

from .errors import DimensionMismatchError, InvalidVectorError

_ZERO_NORM = 1e-12


def _rows(mask: np.ndarray, limit: int = 5) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"rows [{shown}]{more}"


def as_matrix(x, dim: int | None, name: str = "vectors", *, normalize: bool = True) -> np.ndarray:
    """Return `x` as a C-contiguous float32 (N, dim) matrix, validated.

    A 1-D vector becomes one row. Raises DimensionMismatchError for a wrong shape
    or dimension, InvalidVectorError for NaN/inf entries or (when normalising)
    zero-norm rows. With normalize=True rows are scaled to unit L2 norm, which
    makes inner product equal cosine similarity.
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise TypeError(f"{name} is not array-like: {exc}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise DimensionMismatchError(f"{name} must be 2-D (N, dim), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise DimensionMismatchError(f"{name} has dimension {arr.shape[1]}, expected {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size:
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            raise InvalidVectorError(f"{name} contains NaN or inf in {_rows(~finite)}")
    if normalize and len(arr):
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        zero = norms[:, 0] < _ZERO_NORM
        if zero.any():
            raise InvalidVectorError(f"{name} has zero-norm {_rows(zero)}; cannot normalise")
        arr = arr / norms
    return arr


def as_ids(ids, n: int, name: str = "ids") -> np.ndarray:
    """Return `ids` as a contiguous int64 vector of length n, validated (unique, >= 0)."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or len(arr) != n:
        raise DimensionMismatchError(f"{name} must be a 1-D array of {n} ids, got shape {arr.shape}")
    if len(arr) and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if len(arr) and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0 (-1 marks 'no result' in faiss)")
    if len(np.unique(arr)) != len(arr):
        raise ValueError(f"{name} contains duplicates")
    return arr
