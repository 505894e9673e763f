"""Test data for the retrieval tests: clustered vectors, real JPEGs, webdataset shards."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image, ImageDraw

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def clustered_vectors(n: int, dim: int, n_clusters: int, spread: float, seed: int) -> np.ndarray:
    """Unit vectors around random centres (cosine to centre about 1/sqrt(1+spread^2))."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def picture(seed: int, size=(96, 72)) -> Image.Image:
    """A distinct real-looking RGB image: coloured background, shapes and a gradient."""
    rng = np.random.default_rng(seed)
    w, h = size
    grad = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.random(3)[None, None, :]
    base = (grad + rng.integers(0, 128, 3)[None, None, :]).clip(0, 255)
    image = Image.fromarray(np.broadcast_to(base, (h, w, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1, y1 = x0 + int(rng.integers(5, w // 2)), y0 + int(rng.integers(5, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return image


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_shard(path, samples) -> None:
    """Write an img2dataset-style tar: samples = [(key, {ext: bytes})]."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def img2dataset_sample(key: str, seed: int, caption: str) -> tuple[str, dict]:
    meta = {"url": f"https://example.com/img/{key}.jpg", "caption": caption,
            "page_url": f"https://example.com/page/{seed % 3}", "key": key, "status": "success"}
    return key, {"jpg": jpeg_bytes(picture(seed)), "txt": caption.encode(), "json": json.dumps(meta).encode()}
