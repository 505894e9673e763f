"""Decode images of any mode, size or orientation into plain RGB.

Web images come as RGBA/LA/P with transparency, CMYK JPEGs, 16-bit PNGs (I;16),
32-bit integer or float TIFFs, and phone photos with an EXIF orientation tag.
CLIP preprocessing wants 8-bit RGB, so everything goes through `to_rgb`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageReadError

ImageSource = Union[str, os.PathLike, bytes, Image.Image]

# Extensions treated as images when scanning folders and webdataset shards.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

_BACKGROUND = (255, 255, 255)


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _white_level(image: Image.Image, lo: float, hi: float) -> float:
    """The value that means white in a high-bit-depth single-channel image: a fixed convention by mode and
    range, never the image's own maximum, so a flat or dark image keeps its brightness (flat float 0.5 -> 128)."""
    if image.mode.startswith("I;16"):
        return 65535.0
    if image.mode == "F" and lo >= 0.0 and hi <= 1.0:
        return 1.0  # float images in [0, 1]
    for level in (255.0, 65535.0):  # 8- or 16-bit data stored in a 32-bit mode ("I" is how 16-bit PNGs decode)
        if hi <= level:
            return level
    return hi  # wider data: its own range


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float single-channel images -> 8-bit L (values below black and NaN are black)."""
    arr = np.asarray(image, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if image.mode == "F" and -1.0 <= lo < 0.0 and hi <= 1.0:
        arr = (arr + 1.0) / 2.0  # float data in [-1, 1], the convention of normalised image tensors
        lo, hi = (lo + 1.0) / 2.0, (hi + 1.0) / 2.0
    white = _white_level(image, lo, hi)
    arr = np.nan_to_num(arr, nan=0.0, posinf=white, neginf=0.0)
    return Image.fromarray(np.clip(arr / white * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an 8-bit RGB copy of `image`, upright per its EXIF tag. The one implementation every package uses.

    Transparent pixels (RGBA, LA, PA, P with a transparency entry) are composited on white, not black (black
    backgrounds change CLIP embeddings of product photos and logos noticeably). 16-bit, 32-bit and float
    greyscale is scaled by a fixed white level (see _white_level), not clipped. CMYK, YCbCr, L, 1 convert as
    PIL does.
    """
    try:
        if image.getexif().get(0x0112, 1) not in (None, 1):
            image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose an otherwise fine image
        pass
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_l(image).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Open and fully decode an image from a path, bytes or PIL image; return RGB.

    Raises ImageReadError(name-or-path, reason) for missing, truncated or
    undecodable files, so callers can count the failure against its key.
    """
    label = name if name is not None else (
        str(source) if isinstance(source, (str, os.PathLike)) else "<image bytes>"
    )
    if isinstance(source, Image.Image):
        try:
            return to_rgb(source)
        except Exception as exc:
            raise ImageReadError(label, f"cannot convert mode {source.mode!r} to RGB: {exc}") from exc
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageReadError(label, "empty file")
            handle = io.BytesIO(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise ImageReadError(label, "file not found")
            if path.stat().st_size == 0:
                raise ImageReadError(label, "empty file")
            handle = open(path, "rb")
        with handle:
            with warnings.catch_warnings():
                # Large (but below PIL's hard limit) images are legitimate web content.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(handle)
                image.load()  # force the full decode now, while we can name the file
                return to_rgb(image)
    except ImageReadError:
        raise
    except Image.UnidentifiedImageError as exc:
        # PIL's message names only an in-memory buffer object; say what it means instead.
        raise ImageReadError(label, "UnidentifiedImageError: not a recognised image format "
                                    "(PIL cannot identify the data)") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ImageReadError(label, reason) from exc
