"""Stage 4: coherence filter. Keeps clusters whose images show one subject, judged by CLIP image similarity.

Per cluster: (a) members whose image-alt-text score is below `min_image_text_score` go (when set; members
without alt text are kept); (b) members whose cosine to the centroid is below `min_member_similarity` go;
(c) the cluster goes if fewer than K+1 members remain or their mean pairwise cosine is below
`min_mean_similarity`. A dropped cluster's records all count under its reason (cluster_incoherent,
cluster_too_small), so coherence.dropped.* adds up to coherence.in - coherence.out.
"""
from __future__ import annotations

import numpy as np

from .config import CoherenceConfig
from .counts import Counts
from .records import Cluster


def centroid(emb: np.ndarray) -> np.ndarray:
    c = emb.mean(axis=0)
    return c / max(float(np.linalg.norm(c)), 1e-12)


def mean_pairwise_similarity(emb: np.ndarray) -> float:
    n = len(emb)
    if n < 2:
        return 1.0
    s = emb @ emb.T
    return float((s.sum() - np.trace(s)) / (n * (n - 1)))


def coherence_filter(clusters: list[Cluster], cfg: CoherenceConfig, min_size: int, counts: Counts,
                     rejected: list | None = None) -> list[Cluster]:
    """Pure stage function. Dropped clusters are appended to `rejected` as (cluster, reason) when given.

    Each record is counted once: a dropped cluster counts all its members under coherence.dropped.cluster_<reason>;
    image_text_mismatch and off_centroid count the members removed from clusters that are kept."""
    kept_clusters = []
    for c in clusters:
        counts.add("coherence.clusters_in")
        counts.add("coherence.in", len(c.members))
        members = c.members
        mismatched = 0
        if cfg.min_image_text_score is not None:
            ok = [m for m in members if m.image_text_score is None or m.image_text_score >= cfg.min_image_text_score]
            mismatched = len(members) - len(ok)
            members = ok
        off_centroid = 0
        if members:
            emb = np.stack([m.embedding for m in members])
            sims = emb @ centroid(emb)
            ok = [m for m, s in zip(members, sims) if s >= cfg.min_member_similarity]
            off_centroid = len(members) - len(ok)
            members = ok
        reason = None
        if len(members) < min_size:
            # too few left: "incoherent" when the centroid test emptied it, else (alt-text filter) "too_small"
            reason = "incoherent" if off_centroid else "too_small"
        else:
            emb = np.stack([m.embedding for m in members])
            c.mean_similarity = mean_pairwise_similarity(emb)
            for m, s in zip(members, emb @ centroid(emb)):
                m.centroid_similarity = float(s)
            if c.mean_similarity < cfg.min_mean_similarity:
                reason = "incoherent"
        kept = reason is None
        if cfg.min_image_text_score is not None:  # keys present even when 0: a stable stats schema
            counts.add("coherence.dropped.image_text_mismatch", mismatched if kept else 0)
        counts.add("coherence.dropped.off_centroid", off_centroid if kept else 0)
        if not kept:
            counts.add(f"coherence.dropped.cluster_{reason}", len(c.members))
            counts.add(f"coherence.clusters_dropped.{reason}")
            if rejected is not None:
                if c.mean_similarity is None and len(c.members) > 1:
                    c.mean_similarity = mean_pairwise_similarity(np.stack([m.embedding for m in c.members]))
                rejected.append((c, reason))
            continue
        c.members = members
        counts.add("coherence.out", len(members))
        counts.add("coherence.clusters_out")
        kept_clusters.append(c)
    return kept_clusters
