"""The world's judges, its answers to DreamBench's DINO and CLIP-T (model definitions, no I/O).

`WorldJudge` is one small CNN with two readouts:
- identity: a head per identity factor (class, body, parts, secondary colour, accent colour, pattern).
  The identity embedding is the concatenation of the square roots of the factor probabilities, so the
  cosine of two embeddings is the mean Bhattacharyya agreement of their factors. It is trained across
  every context (scenes, positions, sizes, views, styles, accessories and colour changes) to read the
  same factors, so it generalises to subjects it never saw: a new subject is a new combination of
  factors. Colour factors are weighted by the probability that the image is not a pencil sketch
  (a sketch shows shapes, not colours). The primary colour is not an identity factor: a recoloured subject ("a blue toy") is the same
  subject, and the colour head below checks the colour.
- attributes: a head per context attribute (scene, position, size, view, style, colour, accessory).
  It always names the value it sees; an attribute a prompt leaves unspecified is simply not scored
  (`attribute_accuracy`).
Inputs of any size are resized (area) to the judge's resolution (32 px by default), so it judges base
(32 px) and super-resolution (64 px) samples alike.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .world import ATTRIBUTES, IDENTITY_FACTORS

COLOUR_FACTORS = ("secondary", "accent")


@dataclass
class JudgeConfig:
    resolution: int = 32
    widths: tuple[int, ...] = (32, 48, 64, 96)
    hidden: int = 256
    identity_factors: dict = field(default_factory=lambda: {k: list(v) for k, v in IDENTITY_FACTORS.items()})
    attributes: dict = field(default_factory=lambda: {k: list(v) for k, v in ATTRIBUTES.items()})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "JudgeConfig":
        known = {k: d[k] for k in ("resolution", "widths", "hidden", "identity_factors", "attributes") if k in d}
        if "widths" in known:
            known["widths"] = tuple(known["widths"])
        return cls(**known)


class WorldJudge(nn.Module):
    def __init__(self, config: JudgeConfig | None = None):
        super().__init__()
        self.config = config or JudgeConfig()
        c = self.config
        # cheap on purpose (about 6 M multiply-adds per image): judges run inside training loops on CPUs.
        # A 2x2 patch stem halves the resolution first; then conv + pool twice, and one conv at 4x4.
        w0, w1, w2, w3 = c.widths
        self.trunk = nn.Sequential(
            nn.Conv2d(3, w0, 2, stride=2), nn.BatchNorm2d(w0), nn.ReLU(inplace=True),
            nn.Conv2d(w0, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w2, w3, 3, padding=1, bias=False), nn.BatchNorm2d(w3), nn.ReLU(inplace=True))
        cin = w3
        side = c.resolution // 8
        # flattened, not pooled: position and size are spatial facts
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(cin * side * side, c.hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(0.1))
        self.identity_heads = nn.ModuleDict({k: nn.Linear(c.hidden, len(v)) for k, v in c.identity_factors.items()})
        self.attribute_heads = nn.ModuleDict({k: nn.Linear(c.hidden, len(v)) for k, v in c.attributes.items()})
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1], any H, W -> the judge's resolution, centred."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        r = self.config.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images.float(), size=(r, r), mode="area" if images.shape[-1] > r else "bilinear",
                                   align_corners=None if images.shape[-1] > r else False)
        return (images.float() - self.mean) * 2.0

    def forward(self, images: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        h = self.neck(self.trunk(self.prepare(images)))
        return {"identity": {k: head(h) for k, head in self.identity_heads.items()},
                "attributes": {k: head(h) for k, head in self.attribute_heads.items()}}

    @torch.no_grad()
    def identity_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) L2-normalised: concatenated sqrt factor probabilities (cosine = mean factor agreement)."""
        out = self.forward(images)
        logits = out["identity"]
        # colour factors count only where colour is visible: a pencil sketch has none, so its colour
        # parts are weighted by the probability that the image is not a sketch
        styles = self.config.attributes["style"]
        seen = 1.0 - F.softmax(out["attributes"]["style"], dim=-1)[:, styles.index("sketch")]
        parts = []
        for k in self.config.identity_factors:
            part = F.softmax(logits[k], dim=-1).sqrt()
            parts.append(part * seen[:, None] if k in COLOUR_FACTORS else part)
        return F.normalize(torch.cat(parts, dim=-1), dim=-1)

    @torch.no_grad()
    def predict_attributes(self, images: torch.Tensor) -> list[dict[str, str]]:
        logits = self.forward(images)["attributes"]
        names = {k: v for k, v in self.config.attributes.items()}
        idx = {k: logits[k].argmax(-1).tolist() for k in names}
        return [{k: names[k][idx[k][i]] for k in names} for i in range(images.shape[0])]

    @torch.no_grad()
    def predict_factors(self, images: torch.Tensor) -> list[dict[str, str]]:
        logits = self.forward(images)["identity"]
        names = self.config.identity_factors
        idx = {k: logits[k].argmax(-1).tolist() for k in names}
        return [{k: names[k][idx[k][i]] for k in names} for i in range(images.shape[0])]


def to_tensor(images) -> torch.Tensor:
    """PIL images (any mode, one size) -> (N, 3, H, W) float in [0, 1]."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images must share one size to be batched, got {sorted(sizes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def identity_scores(judge: WorldJudge, images, references) -> np.ndarray:
    """DINO's role: mean cosine of each image's identity embedding to the reference images' embeddings."""
    a = judge.identity_embedding(to_tensor(images))
    b = judge.identity_embedding(to_tensor(references))
    return (a @ b.T).mean(dim=1).numpy()


def identity_retrieval_top1(judge: WorldJudge, queries, query_labels: list[int], galleries: list[list]) -> float:
    """Top-1 accuracy of retrieving each query's subject; a subject's gallery embedding is the mean of
    its exemplars' embeddings."""
    centroids = torch.stack([F.normalize(judge.identity_embedding(to_tensor(g)).mean(0), dim=0) for g in galleries])
    q = judge.identity_embedding(to_tensor(queries))
    predicted = (q @ centroids.T).argmax(dim=1).numpy()
    return float((predicted == np.asarray(query_labels)).mean())


def attribute_accuracy(judge: WorldJudge, images, labels: list[dict[str, str]]) -> dict[str, float]:
    """CLIP-T's role: per attribute, the share of images whose predicted value matches the label; only
    the attributes each label dict specifies are scored. Also "overall" (all scored pairs pooled)."""
    predicted = judge.predict_attributes(to_tensor(images))
    hits: dict[str, list[bool]] = {}
    for pred, lab in zip(predicted, labels):
        for k, v in lab.items():
            if v is None:
                continue
            if k not in pred:
                raise KeyError(f"attribute {k!r} is not judged; known: {sorted(pred)}")
            hits.setdefault(k, []).append(pred[k] == v)
    out = {k: float(np.mean(v)) for k, v in hits.items()}
    pooled = [h for v in hits.values() for h in v]
    out["overall"] = float(np.mean(pooled)) if pooled else float("nan")
    return out


__all__ = ["JudgeConfig", "WorldJudge", "to_tensor", "identity_scores", "identity_retrieval_top1",
           "attribute_accuracy"]
