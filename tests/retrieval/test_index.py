"""Index: recall of each planned type against exact search, range search, save/load, bad input."""

import json

import numpy as np
import pytest

from retrieval import (CorruptIndexError, DimensionMismatchError, EmptyIndexError, Index, InvalidVectorError,
                       exact_knn, plan_index, recall_at_k)
from retrieval_testdata import clustered_vectors

DIM = 32


@pytest.fixture(scope="module")
def data():
    x = clustered_vectors(12_300, DIM, n_clusters=150, spread=0.8, seed=0)
    base, queries = x[:12_000], x[12_000:]  # held-out queries from the same clusters
    _, truth = exact_knn(queries, base, 10)
    return base, queries, truth


# Budgets that make the planner pick each family for 12k x 32 vectors.
FAMILIES = [
    ("flat", None, 1.0),  # key forced: 12k is above the Flat threshold
    ("hnsw", "100MB", 0.93),
    ("ivf_flat", "1.8MB", 0.93),
    ("ivf_pq", "500KB", 0.75),  # 16 bytes/vector: quantisation caps recall
]


@pytest.fixture(scope="module")
def built(data):
    base, _, _ = data
    out = {}
    for family, budget, _ in FAMILIES:
        if budget is None:
            out[family] = Index.build(base, key="Flat")
        else:
            out[family] = Index.build(base, memory_budget=budget, target_recall=0.95)
    return out


@pytest.mark.parametrize("family, budget, min_recall", FAMILIES)
def test_recall_of_each_type_against_exact_search(data, built, family, budget, min_recall):
    base, queries, truth = data
    index = built[family]
    assert index.family == family
    if budget is not None:
        assert index.key == plan_index(len(base), DIM, budget).key
    scores, ids = index.search(queries, 10)
    assert ids.dtype == np.int64 and scores.shape == (len(queries), 10)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    recall = recall_at_k(ids, truth, 10)
    assert recall >= min_recall, (index.key, index.search_params, recall)
    if family == "flat":
        assert recall == 1.0
    else:
        # Tuning swept the knob upwards and stopped at the target (or the plateau).
        tuning = index.tuning
        assert tuning.param in ("nprobe", "efSearch") and tuning.sweep
        assert index.search_params[tuning.param] == tuning.value
        assert tuning.met == (tuning.recall >= 0.95)


def test_tuning_for_latency_and_for_unreachable_recall(data, built):
    base, _, _ = data
    ivf = built["ivf_flat"]
    slow_ok = ivf.tune(base, target_recall=None, target_latency_ms=1e6)
    assert slow_ok.met and slow_ok.value == slow_ok.sweep[-1]["value"]  # largest value within the latency
    impossible = built["ivf_pq"].tune(base, target_recall=1.0)
    assert not impossible.met and impossible.recall < 1.0
    with pytest.raises(ValueError):
        ivf.tune(base, target_recall=None, target_latency_ms=None)
    with pytest.raises(ValueError, match="vectors held"):
        ivf.tune(base[:10])
    ivf.tune(base, target_recall=0.95)  # restore for other tests


def test_ids_are_stored_as_int64(data):
    base, queries, _ = data
    ids = np.arange(len(base), dtype=np.int64) * 7 + 10 ** 12  # beyond int32
    for key in ("Flat", "HNSW32,Flat", "IVF64,Flat"):
        index = Index.build(base, ids, key=key, target_recall=None)
        _, found = index.search(base[:5], 1)
        assert found[:, 0].tolist() == ids[:5].tolist(), key
    with pytest.raises(ValueError, match="duplicates"):
        Index.build(base[:3], [1, 1, 2], key="Flat")


def test_range_search_finds_planted_near_duplicates(data):
    base, _, _ = data
    rng = np.random.default_rng(1)
    originals = rng.choice(len(base), 40, replace=False)
    copies = base[originals] + 0.02 * rng.standard_normal((40, DIM)).astype(np.float32) / np.sqrt(DIM)
    vectors = np.concatenate([base, copies])
    copy_ids = np.arange(len(base), len(vectors))
    for key in ("Flat", "HNSW32,Flat", "IVF256,Flat"):
        index = Index.build(vectors, key=key, target_recall=0.95)
        hits = index.range_search(vectors[originals], 0.995)
        for original, copy_id, (ids, scores) in zip(originals, copy_ids, hits):
            assert copy_id in ids and original in ids, key
            assert np.all(scores > 0.995) and np.all(np.diff(scores) <= 0)
        # Unrelated points of the same cluster stay out at this threshold.
        assert sum(len(ids) for ids, _ in hits) <= 2 * len(originals) + 4, key


def test_save_load_round_trip_is_memory_mapped_and_identical(data, built, tmp_path):
    _, queries, _ = data
    for family, index in built.items():
        path = index.save(tmp_path / f"{family}.faiss")
        loaded = Index.load(path)
        assert loaded.mmapped and loaded.key == index.key and len(loaded) == len(index)
        assert loaded.search_params == index.search_params
        a, b = index.search(queries, 10), loaded.search(queries, 10)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)
        # Adding to a memory-mapped index must not crash faiss: it is re-read into RAM first.
        loaded.add(queries[:3])
        assert not loaded.mmapped and len(loaded) == len(index) + 3
        assert Index.load(path, mmap=False).mmapped is False


def test_bad_vectors_get_clear_errors(data):
    base, queries, _ = data
    index = Index.build(base[:2000], key="Flat", target_recall=None)
    with pytest.raises(DimensionMismatchError, match="dimension 16, expected 32"):
        index.search(queries[:, :16], 5)
    with pytest.raises(DimensionMismatchError):
        index.add(base[:5, :8])
    bad = queries[:5].copy()
    bad[2, 3] = np.nan
    with pytest.raises(InvalidVectorError, match=r"rows \[2\]"):
        index.search(bad, 5)
    bad[2, 3] = np.inf
    with pytest.raises(InvalidVectorError, match="NaN or inf"):
        index.add(bad)
    with pytest.raises(InvalidVectorError, match="zero-norm"):
        index.add(np.zeros((1, DIM), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries[:1], 0)
    with pytest.raises(EmptyIndexError):
        Index.create(DIM, "Flat").search(queries[:1], 3)
    with pytest.raises(EmptyIndexError):
        Index.build(np.zeros((0, DIM), np.float32))
    scores, ids = index.search(queries[:2], 2500)  # more than stored: -1 / -inf padding
    assert (ids[:, 2000:] == -1).all() and np.isneginf(scores[:, 2000:]).all()


def test_corrupt_index_files_get_clear_errors(data, tmp_path):
    base, _, _ = data
    path = Index.build(base[:3000], key="IVF32,Flat", target_recall=None).save(tmp_path / "ok.faiss")
    raw = path.read_bytes()
    sidecar = (tmp_path / "ok.faiss.json").read_text()

    (tmp_path / "trunc.faiss").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "trunc.faiss.json").write_text(sidecar)
    with pytest.raises(CorruptIndexError, match="truncated"):
        Index.load(tmp_path / "trunc.faiss")

    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    (tmp_path / "flip.faiss").write_bytes(bytes(flipped))
    (tmp_path / "flip.faiss.json").write_text(sidecar)
    with pytest.raises(CorruptIndexError, match="SHA-256"):
        Index.load(tmp_path / "flip.faiss")

    (tmp_path / "garbage.faiss").write_bytes(b"definitely not a faiss index" * 10)
    with pytest.raises(CorruptIndexError, match="garbage.faiss"):
        Index.load(tmp_path / "garbage.faiss")  # no sidecar: faiss itself rejects it

    (tmp_path / "badjson.faiss").write_bytes(raw)
    (tmp_path / "badjson.faiss.json").write_text("{not json")
    with pytest.raises(CorruptIndexError, match="not valid JSON"):
        Index.load(tmp_path / "badjson.faiss")

    meta = json.loads(sidecar)
    meta["ntotal"] += 1
    (tmp_path / "count.faiss").write_bytes(raw)
    (tmp_path / "count.faiss.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptIndexError, match="records"):
        Index.load(tmp_path / "count.faiss")

    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "missing.faiss")


def test_load_works_without_the_recent_mmap_flag(data, built, tmp_path, monkeypatch):
    # IO_FLAG_MMAP_IFC only exists in recent faiss; older releases fall back to IO_FLAG_MMAP
    # (IVF lists mapped, the rest read into RAM) or to a plain read.
    import faiss

    _, queries, _ = data
    paths = {family: index.save(tmp_path / f"{family}.faiss") for family, index in built.items()}
    monkeypatch.delattr(faiss, "IO_FLAG_MMAP_IFC", raising=False)
    for family, path in paths.items():
        loaded = Index.load(path)
        assert loaded.mmapped == (family in ("ivf_flat", "ivf_pq")), family
        np.testing.assert_array_equal(loaded.search(queries, 10)[1], built[family].search(queries, 10)[1])
    monkeypatch.delattr(faiss, "IO_FLAG_MMAP", raising=False)
    assert not Index.load(paths["ivf_flat"]).mmapped


def test_a_missing_sidecar_is_corrupt_when_required(data, tmp_path):
    base, _, _ = data
    path = Index.build(base[:3000], key="Flat", target_recall=None).save(tmp_path / "x.faiss")
    (tmp_path / "x.faiss.json").unlink()
    assert len(Index.load(path)) == 3000  # a plain faiss file is accepted by default ...
    with pytest.raises(CorruptIndexError, match="x.faiss.json is missing"):
        Index.load(path, require_sidecar=True)  # ... but not where the sidecar is expected


def test_tuning_records_the_count_it_was_measured_at(data, tmp_path):
    base, _, _ = data
    index = Index.build(base[:11_000], key="HNSW16,Flat", target_recall=0.9)
    assert index.tuning.ntotal == 11_000
    index.add(base[11_000:])
    assert index.tuning.ntotal == 11_000 and len(index) == len(base)
    assert Index.load(index.save(tmp_path / "t.faiss")).tuning.ntotal == 11_000
