"""CLIP embeddings (open_clip) + FAISS index + a searchable database of image-caption pairs.

    from retrieval import Embedder, Index, PairsDatabase
"""

from .database import BuildReport, PairsDatabase
from .embedder import Embedder
from .errors import (CorruptDatabaseError, CorruptIndexError, DimensionMismatchError, EmbedderMismatchError,
                     EmptyIndexError, ImageReadError, InvalidVectorError, MemoryBudgetError, ModelLoadError,
                     RetrievalError)
from .exact import exact_knn, recall_at_k
from .images import open_image, to_rgb
from .index import Index, TuningResult
from .index_plan import IndexPlan, plan_index
from .sources import ShardOpenError

__all__ = [
    "Embedder", "Index", "TuningResult", "IndexPlan", "plan_index", "PairsDatabase", "BuildReport",
    "exact_knn", "recall_at_k", "open_image", "to_rgb",
    "RetrievalError", "ImageReadError", "DimensionMismatchError", "InvalidVectorError", "EmptyIndexError",
    "CorruptIndexError", "CorruptDatabaseError", "MemoryBudgetError", "EmbedderMismatchError", "ModelLoadError",
    "ShardOpenError",
]
