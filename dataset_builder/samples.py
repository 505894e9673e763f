"""Stage 9a: ICL training samples (K exemplars -> target) in the layout of docs/interfaces.md."""
from __future__ import annotations

from .records import Cluster, ICLSample, Target


def choose_exemplars(cluster: Cluster, k: int) -> list[int]:
    """The K most representative members (highest cosine to the centroid), members with their own caption first
    (exemplar texts then describe their images); ties keep quality order. Call before fill_missing_captions."""
    def key(i):
        m = cluster.members[i]
        return (not (m.caption or "").strip(), -(m.centroid_similarity or 0.0), i)
    order = sorted(range(len(cluster.members)), key=key)
    return sorted(order[:k])


def _r(x):
    return None if x is None else round(float(x), 6)


def build_samples(cluster: Cluster, exemplars: list[int], targets: list[Target], subject: str) -> list[ICLSample]:
    ex = [cluster.members[i] for i in exemplars]
    if not all((m.caption or "").strip() for m in ex):  # the trainer would drop such exemplars silently
        raise ValueError(f"cluster {cluster.cluster_id}: an exemplar has no caption (fill_missing_captions first)")
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
                             exemplar_texts=[m.caption for m in ex], target_image=t.jpeg,
                             target_text=t.prompt, meta=meta))
    return out
