"""Choice of FAISS index type from vector count, dimension and a memory budget.

The rules follow autofaiss's order of preference (without depending on it) and
are written down here and in docs/retrieval.md. All indexes use inner product on
L2-normalised vectors (= cosine similarity).

1. n < 10,000 -> "Flat". Exact search over 10k vectors costs well under a
   millisecond per query, and there is too little data to train quantizers.
   (If even Flat exceeds the budget, MemoryBudgetError.)
2. HNSW when it fits: M = min(32, largest M the budget allows); used when
   M >= 16 -> "HNSW{M},Flat", efConstruction 80. HNSW keeps the full vectors
   plus a graph (about 4*d + 8.8*M bytes per vector). This is autofaiss's rule,
   with no size limit. An earlier version stopped HNSW at 250k vectors because
   IVF-Flat won on synthetic clusters that were well separated (99.97% of a
   query's true top-10 in its own cluster). On CLIP-like data (shared mean
   direction, power-law spectrum, overlapping clusters; benchmarks/retrieval.py)
   at 1M x 512 on 2 cores, IVF4096,Flat needed nprobe 32 for recall@10 0.963
   and ran 1,226 queries/s; HNSW32 reached 0.963 at efSearch 48 and 6,042
   queries/s. Both built in about 4 minutes (247 s vs 241 s). At 100k: 16,725
   against 3,625 queries/s. So the limit went; the memory budget is what stops
   HNSW at large n.
   efConstruction 80 (faiss default 40) matters on clustered data: at 200k x 512
   clustered vectors it lifted recall@10 at efSearch=64 from 0.89 to 0.98.
3. IVF-Flat when it fits: "IVF{nlist},Flat" with nlist the power of two nearest
   4*sqrt(n), capped so every centroid has >= 39 training points; the coarse
   quantizer becomes an HNSW32 graph ("IVF{nlist}_HNSW32,Flat") from nlist
   16,384 on, where brute-force centroid assignment would dominate search.
   About 4*d + 8 bytes per vector.
4. Otherwise (tight budget) product quantisation:
   "OPQ{m},IVF{nlist},PQ{m}x8" with the largest m in (128, 96, 64, 48, 32, 24,
   16, 8, 4) that divides d, leaves >= 2 dimensions per sub-quantizer and fits
   (about m + 8 bytes per vector). OPQ rotates the vectors so PQ loses less.
   If nothing fits, MemoryBudgetError names the smallest budget that would.

Search-time parameters (nprobe, efSearch) are not part of the plan: they are
tuned afterwards for a target recall or latency (see `Index.tune`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass

from .errors import MemoryBudgetError

FLAT_MAX_VECTORS = 10_000
HNSW_MAX_M = 32
HNSW_MIN_M = 16
HNSW_EF_CONSTRUCTION = 80
IVF_MIN_POINTS_PER_CENTROID = 39  # faiss warns below this
IVF_TRAIN_POINTS_PER_CENTROID = 50
IVF_HNSW_QUANTIZER_FROM_NLIST = 16_384
PQ_TRAIN_POINTS = 65_536  # PQ/OPQ codebooks (256 centroids per sub-quantizer) need far fewer than IVF
PQ_M_CANDIDATES = (128, 96, 64, 48, 32, 24, 16, 8, 4)
ID_BYTES = 8  # int64 ids stored beside every vector


@dataclass(frozen=True)
class IndexPlan:
    """A chosen index: faiss factory key plus the facts behind the choice."""

    key: str
    family: str  # "flat" | "hnsw" | "ivf_flat" | "ivf_pq"
    n: int
    dim: int
    estimated_bytes: int
    memory_budget: int
    train_size: int  # vectors to sample for training (0: no training needed)
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def parse_bytes(value) -> int:
    """Parse a memory size: an int (bytes) or a string such as '4GB', '512MiB', '2g'."""
    if isinstance(value, bool):
        raise ValueError(f"invalid memory size {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"memory size must be positive, got {value!r}")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*", str(value).lower())
    if not match:
        raise ValueError(f"invalid memory size {value!r}; use e.g. '4GB', '512MB' or a byte count")
    number, unit, _ = match.groups()
    size = float(number) * 1024 ** " kmgt".index(unit or " ")
    if size <= 0:
        raise ValueError(f"memory size must be positive, got {value!r}")
    return int(size)


def default_memory_budget() -> int:
    """Half of the memory available right now (MemAvailable), at least 256 MiB."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        available = 8 * 1024 ** 3
    return max(available // 2, 256 * 1024 ** 2)


def ivf_nlist(n: int) -> int:
    """Number of IVF lists: power of two nearest 4*sqrt(n), >= 39 training points per list."""
    target = 4.0 * math.sqrt(max(n, 1))
    nlist = 2 ** max(0, round(math.log2(target)))
    cap = max(1, n // IVF_MIN_POINTS_PER_CENTROID)
    while nlist > cap and nlist > 1:
        nlist //= 2
    return int(nlist)


def _ivf_coarse(nlist: int) -> str:
    return f"IVF{nlist}_HNSW32" if nlist >= IVF_HNSW_QUANTIZER_FROM_NLIST else f"IVF{nlist}"


def _coarse_bytes(nlist: int, dim: int) -> int:
    graph = nlist * (2 * 32 * 4 + 16) if nlist >= IVF_HNSW_QUANTIZER_FROM_NLIST else 0
    return nlist * dim * 4 + graph


def estimate_bytes(family: str, n: int, dim: int, *, m: int = 32, nlist: int = 1) -> int:
    """Approximate resident size of an index holding n vectors of dimension dim."""
    if family == "flat":
        return n * (4 * dim + ID_BYTES)
    if family == "hnsw":
        # level 0 holds 2*M int32 links; upper levels add ~1/M of that; plus level ids.
        return int(n * (4 * dim + 4 * 2 * m * 1.1 + 4 + ID_BYTES))
    if family == "ivf_flat":
        return n * (4 * dim + ID_BYTES) + _coarse_bytes(nlist, dim)
    if family == "ivf_pq":
        codebooks = 256 * dim * 4 + dim * dim * 4  # PQ centroids + OPQ rotation
        return n * (m + ID_BYTES) + _coarse_bytes(nlist, dim) + codebooks
    raise ValueError(f"unknown index family {family!r}")


def plan_index(n: int, dim: int, memory_budget=None) -> IndexPlan:
    """Pick the index type for n vectors of dimension dim within memory_budget (bytes or '4GB').

    See the module docstring for the rules.
    """
    if n < 0 or dim < 1:
        raise ValueError(f"need n >= 0 and dim >= 1, got n={n}, dim={dim}")
    budget = default_memory_budget() if memory_budget is None else parse_bytes(memory_budget)

    def plan(key, family, estimate, train, reason):
        return IndexPlan(key, family, n, dim, int(estimate), budget, int(train), reason)

    flat = estimate_bytes("flat", n, dim)
    if n < FLAT_MAX_VECTORS:
        if flat > budget:
            raise MemoryBudgetError(
                f"{n} x {dim} vectors need {flat} bytes even as a Flat index, over the budget of {budget} bytes")
        return plan("Flat", "flat", flat, 0, f"n={n} < {FLAT_MAX_VECTORS}: exact search is fast enough")

    per_vector = budget / n - 4 * dim - 4 - ID_BYTES
    hnsw_m = min(HNSW_MAX_M, int(per_vector // (4 * 2 * 1.1))) if per_vector > 0 else 0
    if hnsw_m >= HNSW_MIN_M:
        est = estimate_bytes("hnsw", n, dim, m=hnsw_m)
        return plan(f"HNSW{hnsw_m},Flat", "hnsw", est, 0,
                    f"HNSW{hnsw_m} fits the budget ({est} <= {budget} bytes)")

    nlist = ivf_nlist(n)
    coarse = _ivf_coarse(nlist)
    train = min(n, IVF_TRAIN_POINTS_PER_CENTROID * nlist)
    why_not_hnsw = f"HNSW{HNSW_MIN_M} does not fit the budget"
    est = estimate_bytes("ivf_flat", n, dim, nlist=nlist)
    if est <= budget:
        return plan(f"{coarse},Flat", "ivf_flat", est, train, f"{why_not_hnsw}; IVF-Flat fits ({est} bytes)")

    for m in PQ_M_CANDIDATES:
        if dim % m or dim // m < 2:
            continue
        est = estimate_bytes("ivf_pq", n, dim, m=m, nlist=nlist)
        if est <= budget:
            return plan(f"OPQ{m},{coarse},PQ{m}x8", "ivf_pq", est, min(n, max(train, PQ_TRAIN_POINTS)),
                        f"{why_not_hnsw}; IVF-Flat needs {estimate_bytes('ivf_flat', n, dim, nlist=nlist)} "
                        f"bytes > budget {budget}; PQ{m} fits ({est} bytes)")
    smallest = min((m for m in PQ_M_CANDIDATES if dim % m == 0 and dim // m >= 2), default=None)
    need = estimate_bytes("ivf_pq", n, dim, m=smallest, nlist=nlist) if smallest else flat
    raise MemoryBudgetError(f"no index type for {n} x {dim} vectors fits in {budget} bytes; "
                            f"the smallest ({'PQ' + str(smallest) if smallest else 'Flat'}) needs about {need} bytes")


def family_of(key: str) -> str:
    """Index family of a faiss factory key ("flat", "hnsw", "ivf_flat", "ivf_pq" or "other")."""
    parts = [p.strip() for p in key.split(",")]
    parts = [p for p in parts if p and not p.startswith(("IDMap", "OPQ", "PCA", "L2norm", "RR"))]
    has_ivf = any(p.startswith("IVF") for p in parts)
    has_pq = any(p.startswith(("PQ", "SQ", "RQ", "LSQ")) for p in parts)
    if has_ivf:
        return "ivf_pq" if has_pq else "ivf_flat"
    if parts and parts[0].startswith("HNSW"):
        return "hnsw"
    if parts == ["Flat"]:
        return "flat"
    return "other"
