"""Index type selection across sizes and memory budgets."""

import pytest

from retrieval import MemoryBudgetError, plan_index
from retrieval.index_plan import estimate_bytes, family_of, ivf_nlist, parse_bytes

GB = 1024 ** 3


@pytest.mark.parametrize("n, dim, budget, key", [
    (0, 512, GB, "Flat"),
    (9_999, 512, GB, "Flat"),
    (10_000, 512, GB, "HNSW32,Flat"),
    (250_000, 512, 8 * GB, "HNSW32,Flat"),
    (250_001, 512, 8 * GB, "HNSW32,Flat"),                # no size limit: HNSW whenever it fits
    (1_000_000, 512, 8 * GB, "HNSW32,Flat"),              # the benchmark size: HNSW beats IVF on CLIP-like data
    (5_000_000, 512, 64 * GB, "HNSW32,Flat"),
    (5_000_000, 512, 10 * GB, "IVF8192,Flat"),            # HNSW16 (10.25 GiB) does not fit, IVF-Flat does
    (100_000_000, 64, 32 * GB, "IVF32768_HNSW32,Flat"),   # HNSW coarse quantizer for large nlist
    (200_000, 512, 450_000_000, "HNSW21,Flat"),           # budget only allows a thinner graph
    (200_000, 512, 420_000_000, "IVF2048,Flat"),          # no room for HNSW16, IVF-Flat fits
    (1_000_000, 512, 2_300_000_000, "HNSW27,Flat"),
    (1_000_000, 512, 2_100_000_000, "IVF4096,Flat"),
    (1_000_000, 512, GB, "OPQ128,IVF4096,PQ128x8"),      # tight: product quantisation
    (1_000_000, 512, 100 * 1024 ** 2, "OPQ64,IVF4096,PQ64x8"),
    (1_000_000, 512, 30 * 1024 ** 2, "OPQ8,IVF4096,PQ8x8"),
    (1_000_000, 96, 60 * 1024 ** 2, "OPQ48,IVF4096,PQ48x8"),  # m must divide the dimension
])
def test_plan_by_size_and_budget(n, dim, budget, key):
    plan = plan_index(n, dim, budget)
    assert plan.key == key
    assert plan.estimated_bytes <= budget
    assert plan.family == family_of(key)
    assert plan.reason


def test_chosen_plans_never_exceed_budget_and_degrade_in_order():
    order = ["flat", "hnsw", "ivf_flat", "ivf_pq"]
    last = 1
    for budget in [64 * GB, 4 * GB, 0.46e9, 0.42e9, 0.2 * GB, 0.02 * GB, 0.01 * GB]:
        plan = plan_index(200_000, 512, int(budget))
        assert plan.estimated_bytes <= budget
        assert order.index(plan.family) >= last  # a smaller budget never picks a larger index family
        last = order.index(plan.family)


def test_training_sizes():
    assert plan_index(5_000, 64, GB).train_size == 0
    assert plan_index(50_000, 64, GB).train_size == 0  # HNSW needs no training
    ivf = plan_index(1_000_000, 512, 2_100_000_000)
    assert ivf.train_size == 50 * 4096
    pq = plan_index(20_000, 32, 1024 ** 2)
    assert pq.family == "ivf_pq" and pq.train_size == 20_000


def test_nlist_rule():
    assert ivf_nlist(1_000_000) == 4096
    assert ivf_nlist(100_000) == 1024
    assert ivf_nlist(10_000) == 256  # 4*sqrt(n)=400 -> 512, capped at n/39
    assert all(n // ivf_nlist(n) >= 39 for n in [100, 1_000, 12_345, 10 ** 6])


def test_budget_errors():
    with pytest.raises(MemoryBudgetError, match="Flat"):
        plan_index(5_000, 512, 1024)
    with pytest.raises(MemoryBudgetError, match="smallest"):
        plan_index(1_000_000, 512, 1024 ** 2)
    with pytest.raises(ValueError):
        plan_index(-1, 8)


def test_parse_bytes_and_estimates():
    assert parse_bytes("4GB") == 4 * GB
    assert parse_bytes("512mib") == 512 * 1024 ** 2
    assert parse_bytes("1.5g") == int(1.5 * GB)
    assert parse_bytes(1000) == 1000
    for bad in ["", "lots", "-1GB", 0, True]:
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert estimate_bytes("flat", 10, 4) == 10 * (16 + 8)
    assert estimate_bytes("hnsw", 1000, 64, m=32) > estimate_bytes("flat", 1000, 64)
    assert plan_index(50_000, 64).memory_budget > 0  # default: half the free memory


def test_family_of_user_keys():
    assert family_of("IDMap,Flat") == "flat"
    assert family_of("HNSW32,Flat") == "hnsw"
    assert family_of("IVF100,Flat") == "ivf_flat"
    assert family_of("OPQ16_64,IVF100_HNSW32,PQ16x4fs") == "ivf_pq"
    assert family_of("LSH") == "other"
