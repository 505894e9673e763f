"""Stage 9a: ICL training samples (K exemplars -> target) in the layout of docs/interfaces.md."""
from __future__ import annotations

from .records import Cluster, ICLSample, Target


def choose_exemplars(cluster: Cluster, k: int) -> list[int]:
    """The K most representative members (highest cosine to the centroid); ties keep quality order."""
    order = sorted(range(len(cluster.members)),
                   key=lambda i: (-(cluster.members[i].centroid_similarity or 0.0), i))
    return sorted(order[:k])


def _r(x):
    return None if x is None else round(float(x), 6)


def build_samples(cluster: Cluster, exemplars: list[int], targets: list[Target], subject: str) -> list[ICLSample]:
    ex = [cluster.members[i] for i in exemplars]
    out = []
    for n, t in enumerate(targets):
        key = f"{cluster.cluster_id}_{n:04d}"
        sources = [m.record.image_url for m in ex] + ([t.source_url] if t.source_url else [])
        meta = {
            "cluster_id": cluster.cluster_id, "k": len(ex), "page_url": cluster.page_url,
            "page_key": cluster.page_key, "source_urls": sources, "skill": t.skill, "expert": t.expert,
            "scores": {"clip_t": _r(t.clip_t), "clip_i": _r(t.clip_i),
                       "cluster_mean_similarity": _r(cluster.mean_similarity)},
            "subject": subject,
        }
        out.append(ICLSample(key=key, exemplar_images=[m.record.image for m in ex],
                             exemplar_texts=[m.caption or "" for m in ex], target_image=t.jpeg,
                             target_text=t.prompt, meta=meta))
    return out
