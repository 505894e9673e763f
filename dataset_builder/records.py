"""Record types that flow between the builder's stages, and the stable 64-bit hash they are keyed by."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


def hash64(data: str | bytes) -> int:
    """Stable 64-bit hash (blake2b); used for page ids, content ids and partitioning, never Python's hash()."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def cluster_id_of(page_hash: int) -> str:
    return f"{page_hash:016x}"


def partition_of(page_hash: int, num_partitions: int) -> int:
    """Partitions are contiguous ranges of the 64-bit page-hash space, so their number can be chosen after ingest."""
    return (page_hash * num_partitions) >> 64


@dataclass
class RawRecord:
    """One (page, image, text) row as an input adapter yields it, before any decoding."""

    key: str
    source: str
    page_url: str | None
    image_url: str | None
    text: str
    image_bytes: bytes | None = None
    image_path: str | None = None


@dataclass
class Record:
    """A decoded, validated record. `image` holds JPEG bytes (or the original JPEG when it needed no change)."""

    key: str
    source: str
    page_url: str
    page_key: str
    page_hash: int
    image_url: str
    text: str
    image: bytes
    width: int
    height: int
    content_hash: int

    def meta(self) -> dict:
        return {
            "key": self.key, "source": self.source, "page_url": self.page_url, "page_key": self.page_key,
            "page_hash": self.page_hash, "image_url": self.image_url, "text": self.text,
            "width": self.width, "height": self.height, "content_hash": self.content_hash,
        }

    @classmethod
    def from_meta(cls, meta: dict, image: bytes) -> "Record":
        return cls(image=image, **{k: meta[k] for k in (
            "key", "source", "page_url", "page_key", "page_hash", "image_url", "text", "width", "height",
            "content_hash")})


@dataclass
class Member:
    """A record inside a cluster, with its CLIP image embedding and the scores the filters computed."""

    record: Record
    embedding: np.ndarray | None = None
    image_text_score: float | None = None
    centroid_similarity: float | None = None
    caption: str | None = None
    row: int | None = None  # position in its partition's cluster file (the corpus-wide dedupe's id)

    def meta(self) -> dict:
        m = self.record.meta()
        m.update(image_text_score=self.image_text_score, centroid_similarity=self.centroid_similarity,
                 caption=self.caption)
        return m


@dataclass
class Cluster:
    """The images of one normalised page URL."""

    page_hash: int
    page_key: str
    members: list[Member]
    mean_similarity: float | None = None

    @property
    def cluster_id(self) -> str:
        return cluster_id_of(self.page_hash)

    @property
    def page_url(self) -> str:
        return self.members[0].record.page_url if self.members else self.page_key


@dataclass
class Prompt:
    """A new-context prompt. `template` holds a `{subject}` slot so an expert can put in its own subject token."""

    template: str
    skill: str
    subject: str

    @property
    def text(self) -> str:
        return self.template.format(subject=self.subject)


@dataclass
class Target:
    """One image an expert produced for a prompt, with its CLIP filter scores."""

    image: "object"  # PIL.Image.Image, or None when `jpeg` already holds the encoded target
    prompt: str
    skill: str
    expert: str
    source_url: str | None = None
    clip_t: float | None = None
    clip_i: float | None = None
    kept: bool | None = None
    reject_reason: str | None = None
    jpeg: bytes | None = None  # the stored bytes: set by the expert or encoded once by the CLIP filter


@dataclass
class ICLSample:
    """One in-context training example: K exemplars, a target and the metadata row of docs/interfaces.md."""

    key: str
    exemplar_images: list[bytes]
    exemplar_texts: list[str]
    target_image: bytes
    target_text: str
    meta: dict = field(default_factory=dict)
