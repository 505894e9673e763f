"""A FAISS index over L2-normalised vectors with int64 ids.

`Index.build(vectors)` picks the index type with `plan_index` (see
retrieval/index_plan.py for the rules), trains it on a sample, adds the vectors
with their ids, and tunes nprobe / efSearch for a target recall or latency.
Scores are inner products of normalised vectors, i.e. cosine similarities.

Files: `save(path)` writes the faiss file at `path` and a JSON sidecar at
`path + ".json"` (type, dimension, count, tuned search parameters, size and
SHA-256 of the faiss file). `load(path)` checks both, then memory-maps the file
where faiss allows it (flat codes, HNSW vectors, IVF lists).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from .atomic import atomic_path, atomic_write_json
from .errors import CorruptIndexError, DimensionMismatchError, EmptyIndexError
from .exact import drop_self, exact_knn, recall_at_k
from .index_plan import HNSW_EF_CONSTRUCTION, IndexPlan, family_of, plan_index
from .vectors import as_ids, as_matrix

SIDECAR_SUFFIX = ".json"
FORMAT = "retrieval.Index"
FORMAT_VERSION = 1
ADD_CHUNK = 65_536
EF_SEARCH_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
PLATEAU_TOLERANCE = 0.005
PQ_POINTS_PER_CENTROID = 64
OPQ_ITERATIONS = 5
OPQ_TRAIN_POINTS = 10_000  # >= 39 points per codebook centroid, or faiss warns
PQ_KMEANS_ITERATIONS = 10
NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)


@dataclass
class TuningResult:
    """Outcome of `Index.tune`: the chosen value of `param` and what it measured."""

    param: str | None  # "nprobe", "efSearch", or None for exact (Flat) search
    value: int | None
    recall: float  # recall@k against exact search on the tuning queries
    latency_ms: float  # mean time per query when searching the tuning queries as one batch
    qps: float
    met: bool  # whether every requested target was met
    k: int
    sweep: list[dict] = field(default_factory=list)  # one {value, recall, latency_ms, qps} per value tried
    ntotal: int | None = None  # vectors in the index when this was measured (None: not recorded)

    def to_dict(self) -> dict:
        return asdict(self)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Index:
    """FAISS index (inner product, int64 ids) with automatic type choice and tuning."""

    def __init__(self, faiss_index: faiss.Index, key: str, *, plan: IndexPlan | None = None,
                 search_params: dict | None = None, path: str | os.PathLike | None = None,
                 mmapped: bool = False, tuning: TuningResult | None = None):
        if faiss_index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("retrieval.Index needs an inner-product faiss index")
        self._index = faiss_index
        self.key = key
        self.family = family_of(key)
        self.plan = plan
        self.search_params: dict = {}
        self.tuning = tuning
        self._path = Path(path) if path is not None else None
        self._mmapped = mmapped
        for name, value in (search_params or {}).items():
            self.set_search_param(name, value)

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(cls, dim: int, key: str | None = None, *, n_hint: int | None = None,
               memory_budget=None) -> "Index":
        """An empty index for `dim`-dimensional vectors: type `key`, or planned for `n_hint` vectors."""
        plan = None
        if key is None:
            if n_hint is None:
                raise ValueError("give either key= (a faiss factory string) or n_hint= (expected vector count)")
            plan = plan_index(n_hint, dim, memory_budget)
            key = plan.key
        family = family_of(key)
        # Flat/HNSW/PQ cannot store arbitrary ids themselves; IDMap adds an id array.
        factory_key = key if family.startswith("ivf") or key.startswith("IDMap") else f"IDMap,{key}"
        try:
            index = faiss.index_factory(int(dim), factory_key, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"faiss cannot build index key {key!r}: {str(exc).splitlines()[0]}") from exc
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        if hasattr(inner, "hnsw"):
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        _limit_quantizer_training(index)
        return cls(index, key, plan=plan)

    @classmethod
    def build(cls, vectors, ids=None, *, key: str | None = None, memory_budget=None,
              target_recall: float | None = 0.95, target_latency_ms: float | None = None,
              tune_queries=None, k: int = 10, progress: bool | None = None, seed: int = 0) -> "Index":
        """Plan (unless `key` is given), train, add `vectors` with `ids` (default 0..N-1), and tune.

        Tuning runs when a target is given: `tune_queries` (held-out queries) if provided,
        else a sample of the vectors themselves with each query's own id excluded.
        """
        vectors = _validated_rows(vectors, None, "vectors")
        if len(vectors) == 0:
            raise EmptyIndexError("cannot build an index from 0 vectors")
        n, dim = vectors.shape
        ids = np.arange(n, dtype=np.int64) if ids is None else as_ids(ids, n)
        plan = None if key is not None else plan_index(n, dim, memory_budget)
        index = cls.create(dim, key if key is not None else plan.key)
        index.plan = plan
        train_size = plan.train_size if plan is not None else _default_train_size(index._index, n)
        if not index.is_trained:
            index.train(vectors, sample=train_size, seed=seed)
        index.add(vectors, ids, progress=progress)
        if target_recall is not None or target_latency_ms is not None:
            index.tune(vectors, ids=ids, queries=tune_queries, target_recall=target_recall,
                       target_latency_ms=target_latency_ms, k=k, seed=seed)
        return index

    # -------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def mmapped(self) -> bool:
        return self._mmapped

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying faiss index (read it; mutate through this class)."""
        return self._index

    def __repr__(self) -> str:
        return (f"Index(key={self.key!r}, dim={self.dim}, ntotal={self.ntotal}, "
                f"search_params={self.search_params}, mmapped={self._mmapped})")

    # ------------------------------------------------------------- train / add
    def train(self, vectors, *, sample: int | None = None, seed: int = 0) -> None:
        """Train quantizers on `vectors` (or a random sample of `sample` rows of them)."""
        self._writable()
        vectors = _validated_rows(vectors, self.dim, "training vectors", copy_ok=False)
        n = len(vectors)
        if sample is not None and sample < n:
            rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
            vectors = vectors[rows]
        train = as_matrix(vectors, self.dim, "training vectors", normalize=True)
        ivf = _ivf_of(self._index)
        if ivf is not None and len(train) < ivf.nlist:
            raise ValueError(f"{self.key} needs at least {ivf.nlist} training vectors, got {len(train)}")
        self._index.train(train)

    def add(self, vectors, ids=None, *, progress: bool | None = None) -> np.ndarray:
        """Add vectors (normalised here) with int64 ids (default: ntotal, ntotal+1, ...). Returns the ids."""
        self._writable()
        vectors = _validated_rows(vectors, self.dim, "vectors", copy_ok=False)
        n = len(vectors)
        ids = np.arange(self.ntotal, self.ntotal + n, dtype=np.int64) if ids is None else as_ids(ids, n)
        if not self.is_trained:
            raise RuntimeError(f"index {self.key} must be trained before adding vectors (call train())")
        show = n >= 4 * ADD_CHUNK if progress is None else progress
        with tqdm(total=n, desc=f"adding to {self.key}", unit="vec", disable=not show) as bar:
            for start in range(0, n, ADD_CHUNK):
                chunk = as_matrix(vectors[start:start + ADD_CHUNK], self.dim, "vectors", normalize=True)
                self._index.add_with_ids(chunk, ids[start:start + ADD_CHUNK])
                bar.update(len(chunk))
        return ids

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours by cosine. Returns (scores, ids), each (nq, k), best first.

        Where fewer than k results exist, ids are -1 and scores -inf.
        """
        queries = self._queries(queries)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores, ids = self._index.search(queries, int(k))
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return scores, ids

    def range_search(self, queries, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """All vectors with cosine similarity > threshold to each query (e.g. near-duplicates).

        Returns one (ids, scores) pair per query, sorted by score, best first. For
        approximate types the result depends on nprobe / efSearch like k-NN search does.
        """
        queries = self._queries(queries)
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        lims, scores, ids = self._index.range_search(queries, float(threshold))
        out = []
        for q in range(len(queries)):
            s, i = scores[lims[q]:lims[q + 1]], ids[lims[q]:lims[q + 1]]
            order = np.argsort(-s, kind="stable")
            out.append((i[order].astype(np.int64), s[order].astype(np.float32)))
        return out

    def _queries(self, queries) -> np.ndarray:
        if self.ntotal == 0:
            raise EmptyIndexError(f"index {self.key} is empty; add vectors before searching")
        return as_matrix(queries, self.dim, "queries", normalize=True)

    # ------------------------------------------------------- search parameters
    def tunable_param(self) -> str | None:
        """Name of the speed/recall knob of this index type ("nprobe", "efSearch") or None."""
        if _ivf_of(self._index) is not None:
            return "nprobe"
        if self.family == "hnsw":
            return "efSearch"
        return None

    def set_search_param(self, name: str, value) -> None:
        """Set a faiss search parameter (nprobe, efSearch, quantizer_efSearch, k_factor, ...)."""
        value = int(value) if float(value).is_integer() else float(value)
        try:
            faiss.ParameterSpace().set_index_parameter(self._index, name, value)
        except RuntimeError as exc:
            raise ValueError(f"index {self.key} has no search parameter {name!r}") from exc
        self.search_params[name] = value
        ivf = _ivf_of(self._index)
        if name == "nprobe" and ivf is not None and "_HNSW" in self.key:
            # The HNSW coarse quantizer must look at least as wide as the lists we probe.
            q_ef = max(64, 2 * int(value))
            faiss.ParameterSpace().set_index_parameter(self._index, "quantizer_efSearch", q_ef)
            self.search_params["quantizer_efSearch"] = q_ef

    def tune(self, vectors, *, ids=None, queries=None, target_recall: float | None = 0.95,
             target_latency_ms: float | None = None, k: int = 10, sample: int = 500,
             seed: int = 0) -> TuningResult:
        """Choose nprobe / efSearch for a target recall@k and/or per-query latency.

        `vectors` (with `ids`, default 0..N-1) must be what the index holds: they give
        the exact ground truth. `queries` default to `sample` rows of `vectors`, whose
        own ids are excluded from both result lists.
        Rules: with a recall target, the smallest value reaching it; with a latency
        target, the largest value within it; with both, the recall choice unless it is
        too slow, then the latency choice (met=False). Values are tried in ascending
        order and the sweep stops once the answer is known.
        """
        if target_recall is None and target_latency_ms is None:
            raise ValueError("give target_recall and/or target_latency_ms")
        if target_recall is not None and not 0.0 < target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        vectors = _validated_rows(vectors, self.dim, "vectors", copy_ok=False)
        if len(vectors) != self.ntotal:
            raise ValueError(f"tune() needs the {self.ntotal} vectors held by the index, got {len(vectors)}")
        ids = np.arange(len(vectors), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        rng = np.random.default_rng(seed)
        if queries is None:
            rows = np.sort(rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False))
            queries = as_matrix(vectors[rows], self.dim, "vectors", normalize=True)
            self_ids, kk = ids[rows], k + 1
        else:
            queries = as_matrix(queries, self.dim, "queries", normalize=True)
            self_ids, kk = None, k
        truth_s, truth_i = exact_knn(queries, vectors, kk, ids=ids)
        if self_ids is not None:
            truth_s, truth_i = drop_self(truth_i, truth_s, self_ids, k)

        def measure(value):
            if param is not None:
                self.set_search_param(param, value)
            self.search(queries[: min(len(queries), 64)], kk)  # warm caches / mmapped pages
            start = time.perf_counter()
            s, i = self.search(queries, kk)
            elapsed = time.perf_counter() - start
            if self_ids is not None:
                s, i = drop_self(i, s, self_ids, k)
            return {"value": value, "recall": recall_at_k(i, truth_i, k),
                    "latency_ms": 1000.0 * elapsed / len(queries), "qps": len(queries) / max(elapsed, 1e-9)}

        param = self.tunable_param()
        if param is None:
            row = measure(None)
            result = TuningResult(None, None, row["recall"], row["latency_ms"], row["qps"],
                                  met=target_latency_ms is None or row["latency_ms"] <= target_latency_ms,
                                  k=k, sweep=[row], ntotal=self.ntotal)
            self.tuning = result
            return result
        grid = [v for v in (NPROBE_GRID if param == "nprobe" else EF_SEARCH_GRID)]
        if param == "nprobe":
            grid = [v for v in grid if v <= _ivf_of(self._index).nlist] or [1]
        else:
            grid = sorted({max(v, k) for v in grid})
        sweep: list[dict] = []
        recall_pick = latency_pick = None
        for value in grid:
            row = measure(value)
            sweep.append(row)
            fast_enough = target_latency_ms is None or row["latency_ms"] <= target_latency_ms
            if fast_enough:
                latency_pick = row
            if target_recall is not None and row["recall"] >= target_recall:
                recall_pick = row
                break
            if not fast_enough:
                break  # larger values only get slower
            if target_recall is not None and _plateaued(sweep):
                break  # quantised codes cap recall; wider search no longer helps
        if target_recall is None:
            chosen, met = (latency_pick, True) if latency_pick else (sweep[0], False)
        elif recall_pick is not None and (target_latency_ms is None or recall_pick["latency_ms"] <= target_latency_ms):
            chosen, met = recall_pick, True
        elif target_latency_ms is not None and latency_pick is not None:
            chosen, met = latency_pick, False
        else:  # target unreachable: the cheapest value within 0.005 of the best recall seen
            best = max(r["recall"] for r in sweep)
            chosen, met = next(r for r in sweep if r["recall"] >= best - PLATEAU_TOLERANCE), False
        self.set_search_param(param, chosen["value"])
        self.tuning = TuningResult(param, int(chosen["value"]), chosen["recall"], chosen["latency_ms"],
                                   chosen["qps"], met, k, sweep, ntotal=self.ntotal)
        return self.tuning

    # -------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike) -> Path:
        """Write the faiss file at `path` and its JSON sidecar at `path.json` (atomically)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            faiss.write_index(self._index, str(tmp))
            meta = {
                "format": FORMAT, "version": FORMAT_VERSION, "key": self.key, "family": self.family,
                "dim": self.dim, "ntotal": self.ntotal, "metric": "inner_product",
                "search_params": self.search_params, "file_bytes": tmp.stat().st_size, "sha256": _sha256(tmp),
                "plan": self.plan.to_dict() if self.plan else None,
                "tuning": self.tuning.to_dict() if self.tuning else None,
            }
        # The sidecar goes second: a crash between the two leaves a sidecar whose size/sha256 no longer match,
        # which load() reports as a corrupt index (and repair rebuilds).
        atomic_write_json(Path(str(path) + SIDECAR_SUFFIX), meta)
        self._path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, verify: bool = True,
             require_sidecar: bool = False) -> "Index":
        """Read an index written by `save`; memory-mapped when `mmap` and the type allows it.

        verify=True checks size and SHA-256 against the sidecar before faiss parses the
        file (reads the file once). Raises CorruptIndexError on any inconsistency, and,
        with require_sidecar=True, when the sidecar is missing (a plain faiss file
        without one loads otherwise, unchecked).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"index file not found: {path}")
        side = Path(str(path) + SIDECAR_SUFFIX)
        meta = None
        if require_sidecar and not side.is_file():
            raise CorruptIndexError(f"index sidecar {side} is missing, so index file {path} cannot be checked "
                                    "(size, SHA-256, type, tuned parameters)")
        if side.is_file():
            try:
                meta = json.loads(side.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CorruptIndexError(f"index sidecar {side} is not valid JSON: {exc}") from exc
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise CorruptIndexError(f"{side} is not a {FORMAT} sidecar")
            size = path.stat().st_size
            if size != meta.get("file_bytes"):
                raise CorruptIndexError(f"index file {path} is {size} bytes but {side} records "
                                        f"{meta.get('file_bytes')}: truncated or replaced")
            if verify and _sha256(path) != meta.get("sha256"):
                raise CorruptIndexError(f"index file {path} does not match the SHA-256 in {side}: corrupted")
        index, mmapped = _read_faiss(path, mmap)
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise CorruptIndexError(f"index file {path} does not use inner product")
        if meta is not None and (index.d != meta["dim"] or index.ntotal != meta["ntotal"]):
            raise CorruptIndexError(f"index file {path} holds {index.ntotal} x {index.d} vectors but {side} "
                                    f"records {meta['ntotal']} x {meta['dim']}")
        key = meta["key"] if meta else _describe(index)
        plan = IndexPlan(**meta["plan"]) if meta and meta.get("plan") else None
        tuning = TuningResult(**meta["tuning"]) if meta and meta.get("tuning") else None
        return cls(index, key, plan=plan, search_params=(meta or {}).get("search_params"), path=path,
                   mmapped=mmapped, tuning=tuning)

    def _writable(self) -> None:
        """Re-read a memory-mapped index into RAM before changing it (faiss aborts otherwise)."""
        if not self._mmapped:
            return
        if self._path is None or not self._path.is_file():
            raise RuntimeError("this index is memory-mapped read-only and its file is gone; cannot modify it")
        index, _ = _read_faiss(self._path, mmap=False)
        self._index, self._mmapped = index, False
        params, self.search_params = self.search_params, {}
        for name, value in params.items():
            self.set_search_param(name, value)


def _limit_quantizer_training(index: faiss.Index) -> None:
    """Cap PQ/OPQ training cost, which faiss defaults make take many minutes at d=512.

    Measured on 2 busy cores: PQ64 training on 65k x 512 took 45 s and two OPQ
    iterations 93 s (faiss default: 50 iterations, each re-training the PQ). The PQ
    trains on 64 points per centroid (faiss warns below 39) with 10 k-means
    iterations (faiss: 25); the OPQ rotation, which only needs rough codebooks, on
    10,000 points with 5 iterations. On 20k x 32 clustered vectors (OPQ16,IVF512,
    PQ16x8, nprobe 6) this gave the same recall@10 as faiss defaults (0.892) in
    8.8 s instead of 115 s (1 thread).
    """
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        if hasattr(ivf, "do_polysemous_training"):
            # index_factory enables polysemous training for IVF-PQ; it only serves Hamming
            # filtering, which we do not use, and multiplied training time by ~3.
            ivf.do_polysemous_training = False
        if hasattr(ivf, "pq"):
            ivf.pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
            ivf.pq.cp.niter = PQ_KMEANS_ITERATIONS
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = OPQ_ITERATIONS
                transform.niter_pq_0 = OPQ_ITERATIONS
                transform.max_train_points = OPQ_TRAIN_POINTS


def _plateaued(sweep: list[dict], steps: int = 3) -> bool:
    """True when the last `steps` values raised recall by less than PLATEAU_TOLERANCE in total."""
    if len(sweep) <= steps:
        return False
    return sweep[-1]["recall"] - sweep[-1 - steps]["recall"] < PLATEAU_TOLERANCE


def _validated_rows(vectors, dim, name, copy_ok=True) -> np.ndarray:
    """Check shape/dimension cheaply; finiteness and norms are checked per chunk later."""
    arr = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise DimensionMismatchError(f"{name} must be 2-D (N, dim), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise DimensionMismatchError(f"{name} have dimension {arr.shape[1]}, index expects {dim}")
    return arr


def _default_train_size(index: faiss.Index, n: int) -> int:
    ivf = _ivf_of(index)
    return min(n, max(50 * ivf.nlist, 65_536)) if ivf is not None else min(n, 65_536)


def _ivf_of(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _mmap_flags() -> list[int]:
    """Memory-map flags to try, best first.

    IO_FLAG_MMAP_IFC (recent faiss only; looked up with getattr so older releases
    still work) also maps the codes of flat and HNSW storage. IO_FLAG_MMAP (every
    faiss the project supports) maps only IVF inverted lists; the rest of the index
    is read into RAM. If faiss refuses both, the index is read into RAM.
    """
    return [flag for flag in (getattr(faiss, "IO_FLAG_MMAP_IFC", None), getattr(faiss, "IO_FLAG_MMAP", None))
            if flag is not None]


def _read_faiss(path: Path, mmap: bool):
    errors = []
    flags = _mmap_flags() if mmap else []
    for flag in flags + [0]:
        try:
            index = faiss.read_index(str(path), flag)
        except RuntimeError as exc:
            errors.append(str(exc).strip().splitlines()[-1][:300])
            continue
        # The older flag maps IVF lists only; anything else was read into RAM.
        mapped = flag != 0 and (flag == getattr(faiss, "IO_FLAG_MMAP_IFC", None) or _ivf_of(index) is not None)
        return index, mapped
    raise CorruptIndexError(f"cannot read faiss index {path}: {errors[-1]}")


def _describe(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return type(inner).__name__
