"""CLIP embeddings (open_clip) + FAISS index + a searchable database of image-caption pairs.

    from retrieval import Embedder, Index, PairsDatabase

The names are imported on first use, so the light modules that other packages share (``retrieval.atomic``,
``retrieval.shards``, ``retrieval.images``) do not pull in torch, open_clip and faiss.
"""
import importlib

from .errors import (CorruptDatabaseError, CorruptIndexError, DimensionMismatchError, EmbedderMismatchError,
                     EmptyIndexError, ImageReadError, InvalidVectorError, MemoryBudgetError, ModelLoadError,
                     RetrievalError)

_LAZY = {
    "PairsDatabase": "database", "BuildReport": "database", "Embedder": "embedder", "exact_knn": "exact",
    "recall_at_k": "exact", "open_image": "images", "to_rgb": "images", "Index": "index",
    "TuningResult": "index", "IndexPlan": "index_plan", "plan_index": "index_plan", "ShardOpenError": "shards",
}

__all__ = [
    "Embedder", "Index", "TuningResult", "IndexPlan", "plan_index", "PairsDatabase", "BuildReport",
    "exact_knn", "recall_at_k", "open_image", "to_rgb",
    "RetrievalError", "ImageReadError", "DimensionMismatchError", "InvalidVectorError", "EmptyIndexError",
    "CorruptIndexError", "CorruptDatabaseError", "MemoryBudgetError", "EmbedderMismatchError", "ModelLoadError",
    "ShardOpenError",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
