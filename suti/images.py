"""PIL <-> tensor conversion for images of any size and mode. The one place that knows PIL.

Accepts RGBA/LA/P (composited on white), L, I;16 / I (16/32-bit, rescaled), F, CMYK, YCbCr, and
applies EXIF orientation. Fits to a square by center-crop (default) or pad.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from retrieval.images import to_rgb  # the one any-mode -> RGB conversion (re-exported here)

__all__ = ["ImageLoadError", "open_image", "to_rgb", "fit_square", "pil_to_tensor", "load_image_tensor", "load_images",
           "tensor_to_pil", "make_grid"]

ImageLike = Union[Image.Image, str, Path, bytes]
FIT_MODES = ("center-crop", "pad")


class ImageLoadError(ValueError):
    """An image that cannot be read; the message names the file."""


def open_image(src: ImageLike, name: str | None = None) -> Image.Image:
    """Open and fully decode an image from a path, bytes or PIL image, naming the source on failure."""
    if isinstance(src, Image.Image):
        label = name or getattr(src, "filename", None) or "<PIL image>"
        try:
            src.load()  # a lazily opened image of a truncated file fails here, named
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageLoadError(f"{label}: cannot decode image ({type(e).__name__}: {e})") from e
        return src
    label = name or (str(src) if isinstance(src, (str, Path)) else "<bytes>")
    try:
        if isinstance(src, (bytes, bytearray)):
            if not src:
                raise ImageLoadError(f"{label}: empty (zero-byte) image data")
            img = Image.open(io.BytesIO(src))
        else:
            path = Path(src)
            if not path.exists():
                raise ImageLoadError(f"{label}: no such file")
            if path.stat().st_size == 0:
                raise ImageLoadError(f"{label}: empty (zero-byte) file")
            img = Image.open(path)
        img.load()  # decode now so a truncated file fails here, with its name
        return img
    except ImageLoadError:
        raise
    except UnidentifiedImageError as e:  # PIL's own message only repeats the file object's repr
        raise ImageLoadError(f"{label}: not an image format PIL can read") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"{label}: cannot decode image ({type(e).__name__}: {e})") from e


def fit_square(img: Image.Image, size: int, mode: str = "center-crop", fill=(255, 255, 255)) -> Image.Image:
    if mode not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {mode!r}")
    w, h = img.size
    if mode == "center-crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    else:
        s = max(w, h)
        canvas = Image.new("RGB", (s, s), fill)
        canvas.paste(img, ((s - w) // 2, (s - h) // 2))
        img = canvas
    return img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0 if s > 3 * size else None)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL -> (3, H, W) float tensor in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def load_image_tensor(src: ImageLike, size: int, fit: str = "center-crop", name: str | None = None) -> torch.Tensor:
    return pil_to_tensor(fit_square(to_rgb(open_image(src, name)), size, fit))


def load_images(srcs: Sequence[ImageLike], size: int, fit: str = "center-crop") -> torch.Tensor:
    return torch.stack([load_image_tensor(s, size, fit) for s in srcs])


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) or (3, H, W) in [-1, 1] -> PIL images."""
    if x.ndim == 3:
        x = x[None]
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def make_grid(images: Sequence[Image.Image], cols: int | None = None, pad: int = 2) -> Image.Image:
    """Tile PIL images in a grid (rows of ``cols``), white padding."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    n = len(images)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), (255, 255, 255))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
