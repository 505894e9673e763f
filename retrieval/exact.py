"""Exact (brute-force) k-NN by inner product, and recall against it.

Used as ground truth when tuning search parameters and in the benchmark. Works
in row blocks so a memory-mapped (N, d) array is never copied whole.
"""

from __future__ import annotations

import faiss
import numpy as np

BLOCK_ROWS = 262_144


def exact_knn(queries: np.ndarray, vectors: np.ndarray, k: int, ids: np.ndarray | None = None,
              block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products of each query against all rows of `vectors`.

    Returns (scores, ids), both (nq, k), best first; ids are `ids[row]` (default: the row).
    Missing results (k > N) have id -1 and score -inf.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq, n = len(queries), len(vectors)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    for start in range(0, n, block_rows):
        block = np.ascontiguousarray(vectors[start:start + block_rows], dtype=np.float32)
        kk = min(k, len(block))
        s, i = faiss.knn(queries, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
        i = i + start
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, i], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, order, axis=1)
        best_i = np.take_along_axis(cand_i, order, axis=1)
    if ids is not None:
        ids = np.asarray(ids, dtype=np.int64)
        best_i = np.where(best_i >= 0, ids[np.clip(best_i, 0, None)], -1)
    return best_s, best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true top-k ids present in the found top-k ids (ids -1 ignored)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits, total = 0, 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t, assume_unique=False))
        total += len(t)
    return hits / total if total else 1.0


def drop_self(ids: np.ndarray, scores: np.ndarray, self_ids: np.ndarray, k: int):
    """Remove each query's own id from its result row and keep k results.

    Queries sampled from the indexed vectors would otherwise always find
    themselves, which overstates recall.
    """
    out_i = np.full((len(ids), k), -1, dtype=np.int64)
    out_s = np.full((len(ids), k), -np.inf, dtype=np.float32)
    for row, (i, s, own) in enumerate(zip(ids, scores, self_ids)):
        keep = i != own
        i, s = i[keep][:k], s[keep][:k]
        out_i[row, :len(i)] = i
        out_s[row, :len(s)] = s
    return out_s, out_i
