"""Stage 5: near-duplicate removal with FAISS range search, inside each cluster and across the corpus.

Inside a cluster, members are in quality order (largest first) and a member goes when an earlier kept member
is within `threshold` cosine.

Across the corpus, memory stays bounded by splitting the embeddings into coarse cells (an IVF-style k-means
quantiser placed on a deterministic sample); each embedding is searched in its nearest cell, and also in the
second-nearest when that is within `second_cell_margin`, so pairs near a cell boundary are still found.
The rule is order-free, so any cell layout or backend gives the same answer for the pairs it finds:
a member goes when a near-duplicate exists in a cluster with a smaller cluster id.
"""
from __future__ import annotations

import faiss
import numpy as np

from .counts import Counts
from .records import Cluster


def range_pairs(emb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j), i != j, with cosine >= threshold (exact, faiss.IndexFlatIP.range_search)."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if len(emb) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    # OpenMP start-up costs ~3 ms per call; a cluster-sized search is done in microseconds on one thread
    threads = faiss.omp_get_max_threads()
    if len(emb) < 2048:
        faiss.omp_set_num_threads(1)
    try:
        # faiss keeps results with score > radius; the epsilon makes ">= threshold" robust to float rounding.
        lims, _, labels = index.range_search(emb, float(threshold) - 1e-6)
    finally:
        faiss.omp_set_num_threads(threads)
    rows = np.repeat(np.arange(len(emb)), np.diff(lims).astype(np.int64))
    keep = rows != labels
    return rows[keep], labels[keep].astype(np.int64)


def dedupe_within(clusters: list[Cluster], threshold: float, min_size: int, counts: Counts,
                  rejected: list | None = None) -> list[Cluster]:
    out = []
    for c in clusters:
        emb = np.stack([m.embedding for m in c.members])
        rows, cols = range_pairs(emb, threshold)
        removed = np.zeros(len(emb), dtype=bool)
        partners: dict[int, list[int]] = {}
        for i, j in zip(rows.tolist(), cols.tolist()):
            if j < i:
                partners.setdefault(i, []).append(j)
        for i in range(len(emb)):  # greedy in quality order: drop i if a kept earlier member is its near-dup
            if any(not removed[j] for j in partners.get(i, ())):
                removed[i] = True
        members = [m for m, r in zip(c.members, removed) if not r]
        counts.add("dedupe.dropped.near_duplicate_in_cluster", int(removed.sum()))
        if len(members) < min_size:
            counts.add("dedupe.dropped.cluster_too_small", len(members))
            counts.add("dedupe.clusters_dropped.too_small")
            if rejected is not None:
                rejected.append((c, "too_small_after_dedupe"))
            continue
        c.members = members
        out.append(c)
    return out


# --- corpus-wide pass ---------------------------------------------------------------------------------------

def num_cells(n_items: int, cell_size: int) -> int:
    return max(1, -(-n_items // max(1, cell_size)))


def sample_threshold(n_items: int, sample_size: int) -> int:
    """Members whose key hash (hash64) is below this are in the quantiser's sample (about sample_size of them)."""
    if n_items <= sample_size:
        return 2**64
    return (sample_size << 64) // n_items


def train_cells(sample: np.ndarray, n_cells: int, iters: int = 10) -> np.ndarray:
    """Deterministic spherical k-means in numpy (sample rows already in a canonical order)."""
    sample = np.asarray(sample, dtype=np.float32)
    if n_cells <= 1 or len(sample) == 0:
        return np.zeros((1, sample.shape[1] if sample.ndim == 2 else 1), dtype=np.float32)
    n_cells = min(n_cells, len(sample))
    cent = sample[np.linspace(0, len(sample) - 1, n_cells).round().astype(int)].copy()
    for _ in range(iters):
        assign = np.argmax(sample @ cent.T, axis=1)
        for c in range(n_cells):
            pts = sample[assign == c]
            if len(pts):
                v = pts.sum(axis=0)
                cent[c] = v / max(float(np.linalg.norm(v)), 1e-12)
    return cent


def assign_cells(emb: np.ndarray, centroids: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cells): each row's nearest cell, plus its second-nearest when within `margin` cosine."""
    if len(centroids) <= 1:
        return np.arange(len(emb)), np.zeros(len(emb), dtype=np.int64)
    sims = emb @ centroids.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :2]
    best = sims[np.arange(len(emb)), order[:, 0]]
    second = sims[np.arange(len(emb)), order[:, 1]]
    rows = [np.arange(len(emb))]
    cells = [order[:, 0]]
    near = np.nonzero(best - second <= margin)[0]
    rows.append(near)
    cells.append(order[near, 1])
    return np.concatenate(rows), np.concatenate(cells).astype(np.int64)


def cross_corpus_removals(emb: np.ndarray, cluster_hashes: np.ndarray, threshold: float) -> np.ndarray:
    """Indices (into emb) of items with a near-duplicate in a cluster whose id is smaller."""
    rows, cols = range_pairs(emb, threshold)
    ch = np.asarray(cluster_hashes, dtype=np.uint64)
    mask = ch[cols] < ch[rows]
    return np.unique(rows[mask])
