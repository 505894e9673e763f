"""Smoke test: the builder runs with retrieval.Embedder on a tiny random open_clip loaded from local-dir:."""
import pytest

from db_helpers import planted_config

from dataset_builder import build_dataset, config_from_dict, read_icl_shard

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _embedder_cls():
    try:
        from retrieval import Embedder
    except ImportError:
        embedder = pytest.importorskip("retrieval.embedder", reason="retrieval.Embedder is not there yet")
        Embedder = getattr(embedder, "Embedder", None)
        if Embedder is None:
            pytest.skip("retrieval.Embedder is not there yet")
    return Embedder


def test_build_with_tiny_open_clip_from_local_dir(planted, tmp_path):
    Embedder = _embedder_cls()
    folder = tmp_path / "tiny_clip"
    Embedder.from_config(TINY_CLIP, name="db-tiny-clip").save_pretrained(folder)
    # random weights: thresholds open, so the run exercises loading, batching and scoring end to end
    cfg = planted_config(planted["shards"], tmp_path / "out",
                         embedder={"model": f"local-dir:{folder}", "factory": None, "batch_size": 16},
                         coherence={"min_member_similarity": -1.0, "min_mean_similarity": -1.0,
                                    "min_image_text_score": -1.0},
                         dedupe={"threshold": 0.9999},
                         expert={"type": "held_out", "factory": None, "min_clip_t": -1.0, "min_clip_i": -1.0})
    stats = build_dataset(config_from_dict(cfg))
    c = stats["counts"]
    assert c["embed"]["images"] == c["group"]["out"] and c["embed"]["texts"] > 0
    samples = [s for p in sorted((tmp_path / "out").glob("icl-*.tar")) for s in read_icl_shard(p)]
    assert samples and all(-1.0 <= s["json"]["scores"]["clip_t"] <= 1.0 for s in samples)
