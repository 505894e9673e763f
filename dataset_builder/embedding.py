"""Stage 3: CLIP embeddings for cluster members, through retrieval.Embedder or any object with its API
(`embed_images(list[PIL.Image]) -> (N, D)` and `embed_texts(list[str]) -> (N, D)`, both L2-normalised)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .config import EmbedderConfig
from .counts import Counts
from .inputs import load_factory
from .records import Cluster

EMBED_DECODE_SIDE = 448  # JPEG draft decode to >= this side: CLIP sees 224 px, full decode would be wasted


def open_image(jpeg: bytes, draft_side: int | None = EMBED_DECODE_SIDE) -> Image.Image:
    im = Image.open(io.BytesIO(jpeg))
    if draft_side and im.format == "JPEG":
        im.draft("RGB", (draft_side, draft_side))
    return im.convert("RGB")


def load_embedder(cfg: EmbedderConfig):
    """`factory` ("module:fn", kwargs) or retrieval.Embedder.from_pretrained(model, pretrained=...)."""
    if cfg.factory:
        return load_factory(cfg.factory)(**cfg.kwargs)
    if not cfg.model:
        raise ValueError("embedder: set `model` (open_clip name or local-dir:/path) or `factory`")
    import torch
    try:
        from retrieval import Embedder
    except ImportError:
        from retrieval.embedder import Embedder
    kwargs = dict(cfg.kwargs)
    if cfg.pretrained is not None:
        kwargs["pretrained"] = cfg.pretrained
    kwargs.setdefault("dtype", torch.float32)
    return Embedder.from_pretrained(cfg.model, device=cfg.device, **kwargs)


def _normalise(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def embed_images(embedder, jpegs: list[bytes], batch_size: int) -> np.ndarray:
    """Decodes per batch, so at most `batch_size` PIL images are alive at once."""
    out = []
    for i in range(0, len(jpegs), batch_size):
        out.append(_normalise(embedder.embed_images([open_image(b) for b in jpegs[i:i + batch_size]])))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def embed_texts(embedder, texts: list[str], batch_size: int) -> np.ndarray:
    out = [_normalise(embedder.embed_texts(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def embed_clusters(clusters: list[Cluster], embedder, batch_size: int, counts: Counts,
                   with_text: bool = False) -> list[Cluster]:
    """Sets member.embedding (and member.image_text_score when with_text) for every member of every cluster."""
    members = [m for c in clusters for m in c.members]
    if not members:
        return clusters
    emb = embed_images(embedder, [m.record.image for m in members], batch_size)
    for m, e in zip(members, emb):
        m.embedding = e
    counts.add("embed.images", len(members))
    if with_text:
        idx = [i for i, m in enumerate(members) if m.record.text.strip()]
        if idx:
            temb = embed_texts(embedder, [members[i].record.text for i in idx], batch_size)
            for i, t in zip(idx, temb):
                members[i].image_text_score = float(np.dot(members[i].embedding, t))
        counts.add("embed.texts", len(idx))
    return clusters
