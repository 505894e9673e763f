"""Keeping a PairsDatabase's index in line with its parts, and exact near-duplicate search.

Index upkeep after every add:
- New rows are added to the existing index.
- Once the database has grown RETUNE_GROWTH times since the index was last tuned,
  the type is planned again for the new size. If the plan changed (Flat -> HNSW
  past 10k, HNSW -> IVF past the HNSW limit, more IVF lists), the index is rebuilt
  and tuned; otherwise nprobe / efSearch is tuned again on all the vectors. An
  IVF or HNSW index tuned at 10k rows would otherwise serve 100k rows with the
  search width chosen for 10k, and recall drops.
- database.json records the count at which the recall was measured
  (`tuned_at_count`), so a recall reported between re-tunes says what it is.
"""

from __future__ import annotations

import numpy as np

from .errors import CorruptIndexError
from .index import Index
from .index_plan import parse_bytes, plan_index

INDEX_FILE = "index.faiss"
RETUNE_GROWTH = 1.5
RESCORE_BATCH = 512  # queries per exact re-scoring step: batch x candidates x dim floats in memory


class IndexUpkeepMixin:
    """Index building, re-tuning and near-duplicate search of PairsDatabase."""

    def rebuild_index(self, *, memory_budget=None, target_recall: float | None = None,
                      target_latency_ms: float | None = None, progress: bool | None = None) -> Index:
        """Re-plan, rebuild and re-tune the index over all embeddings, then save it."""
        settings = self._state["settings"]
        if memory_budget is not None:
            settings["memory_budget"] = parse_bytes(memory_budget)
        if target_recall is not None:
            settings["target_recall"] = target_recall
        if target_latency_ms is not None:
            settings["target_latency_ms"] = target_latency_ms
        self.index = None
        self._sync_index(progress, force_rebuild=True)
        return self.index

    @property
    def index_info(self) -> dict:
        """Index type, search parameters and the tuned recall with the record count it was measured at."""
        return dict(self._state.get("index") or {}, count=len(self), k=self._state["settings"].get("k", 10))

    # -------------------------------------------------------- near-duplicates
    def near_duplicates(self, threshold: float = 0.95, batch: int = 4096,
                        candidates: int = 32) -> list[tuple[int, int, float]]:
        """All pairs (id_a < id_b, score) whose cosine similarity exceeds `threshold`.

        Scores are exact: with an approximate index (HNSW, IVF, PQ) the index only
        proposes `candidates` neighbours per record (more when all of them pass), and
        each is re-scored against the stored float32 embeddings. A PQ index's own
        scores are off by enough to drop true duplicates below the threshold.
        """
        self._check_not_empty()
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        exact_index = self.index.family == "flat"
        found: dict[tuple[int, int], float] = {}
        for part in self._state["parts"]:
            if not part["count"]:
                continue
            vectors = self._part_vectors(part)
            for start in range(0, len(vectors), batch):
                queries = np.ascontiguousarray(vectors[start:start + batch], dtype=np.float32)
                hits = (self.index.range_search(queries, threshold) if exact_index
                        else self._rescored_neighbours(queries, threshold, candidates))
                for offset, (ids, scores) in enumerate(hits):
                    me = part["start"] + start + offset
                    for other, score in zip(ids.tolist(), scores.tolist()):
                        if other != me:  # both directions are searched; either one finds the pair
                            found.setdefault((min(me, other), max(me, other)), score)
        return sorted((a, b, s) for (a, b), s in found.items())

    def _rescored_neighbours(self, queries: np.ndarray, threshold: float, candidates: int):
        out: list = [None] * len(queries)
        for lo in range(0, len(queries), RESCORE_BATCH):
            rows = np.arange(lo, min(lo + RESCORE_BATCH, len(queries)))
            k = min(max(1, candidates), len(self))
            while len(rows):
                _, ids = self.index.search(queries[rows], k)
                exact = np.einsum("qd,qkd->qk", queries[rows], self._gather(ids))
                passed = (ids >= 0) & (exact > threshold)
                # Every candidate passed: there may be more beyond k; ask again, wider.
                full = passed.all(axis=1) & (k < len(self))
                for j in np.flatnonzero(~full):
                    order = np.argsort(-exact[j][passed[j]], kind="stable")
                    out[rows[j]] = (ids[j][passed[j]][order], exact[j][passed[j]][order].astype(np.float32))
                rows, k = rows[full], min(4 * k, len(self))
        return out

    def _gather(self, ids: np.ndarray) -> np.ndarray:
        """Stored embeddings for an array of ids (any shape; -1 gives zeros) -> ids.shape + (dim,)."""
        flat = ids.reshape(-1)
        out = np.zeros((len(flat), self.dim), np.float32)
        parts = [p for p in self._state["parts"] if p["count"]]
        starts = np.array([p["start"] for p in parts], dtype=np.int64)
        which = np.searchsorted(starts, flat, side="right") - 1
        for j in np.unique(which[flat >= 0]):
            mask = (which == j) & (flat >= 0)
            rows = flat[mask] - starts[j]
            order = np.argsort(rows)  # sorted reads are kinder to a memory-mapped file
            picked = np.empty((len(rows), self.dim), np.float32)
            picked[order] = self._part_vectors(parts[j])[rows[order]]
            out[mask] = picked
        return out.reshape(ids.shape + (self.dim,))

    # ---------------------------------------------------------------- upkeep
    def _open_index(self, mmap: bool, repair: bool) -> None:
        path = self.folder / INDEX_FILE
        if self._state.get("index") is None or not path.is_file():
            if len(self):
                if self._state.get("index") is not None and not repair:
                    raise CorruptIndexError(f"index file {path} is missing; reopen with repair=True (or run "
                                            f"`suti index repair {self.folder}`) to rebuild it")
                self._sync_index(None, force_rebuild=True)
            return
        try:
            # The database wrote the sidecar itself, so a missing one means a damaged folder.
            self.index = Index.load(path, mmap=mmap, require_sidecar=True)
        except CorruptIndexError as exc:
            if not repair:
                raise CorruptIndexError(f"{exc}. Reopen with PairsDatabase.open(..., repair=True) or run "
                                        f"`suti index repair {self.folder}` to rebuild the index from the stored "
                                        "embeddings") from exc
            self._sync_index(None, force_rebuild=True)
            return
        if self.index.dim != self.dim:
            raise CorruptIndexError(f"index {path} is {self.index.dim}-d, database {self.folder} is {self.dim}-d")
        if self.index.ntotal != len(self):
            self._sync_index(None)  # an interrupted build: catch the index up (or rebuild it)

    def _sync_index(self, progress: bool | None, force_rebuild: bool = False) -> None:
        """Bring the index in line with the parts: add new rows; re-tune or re-plan after growth."""
        n = len(self)
        if n == 0:
            return
        settings = self._state["settings"]
        info = self._state.get("index") or {}
        targets = {"target_recall": settings.get("target_recall"),
                   "target_latency_ms": settings.get("target_latency_ms"), "k": settings.get("k", 10)}
        rebuild = force_rebuild or self.index is None or self.index.ntotal > n
        retune = False
        built_at = info.get("built_at_count", n)
        tuned_at = info.get("tuned_at_count", built_at)
        if not rebuild and self.index.ntotal < n and n >= RETUNE_GROWTH * max(1, tuned_at or 1):
            rebuild = plan_index(n, self.dim, settings.get("memory_budget")).key != self.index.key
            retune = not rebuild
        if rebuild:
            self.index = Index.build(self.embeddings, np.arange(n, dtype=np.int64),
                                     memory_budget=settings.get("memory_budget"), progress=progress, **targets)
            built_at = tuned_at = n
        elif self.index.ntotal < n:
            start = self.index.ntotal
            for part in self._state["parts"]:
                lo, hi = part["start"], part["start"] + part["count"]
                if hi <= start or not part["count"]:
                    continue
                rows = self._part_vectors(part)[max(0, start - lo):]
                self.index.add(rows, np.arange(max(start, lo), hi, dtype=np.int64), progress=progress)
            if retune and self.index.tunable_param() is not None and (
                    targets["target_recall"] is not None or targets["target_latency_ms"] is not None):
                self.index.tune(self.embeddings, **targets)
                tuned_at = n
        self.index.save(self.folder / INDEX_FILE)
        tuning = self.index.tuning
        self._state["index"] = {
            "file": INDEX_FILE, "key": self.index.key, "ntotal": self.index.ntotal, "built_at_count": built_at,
            "tuned_at_count": tuned_at, "search_params": self.index.search_params,
            "tuned_recall": None if tuning is None else round(float(tuning.recall), 4),
            "tuned_latency_ms": None if tuning is None else round(float(tuning.latency_ms), 4),
            "tuning_met_targets": None if tuning is None else bool(tuning.met),
        }
        self._write_state()

