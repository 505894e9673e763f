"""Stage 1: decode and validate. Bytes in, RGB JPEG records out; every refusal is counted with a reason.

Reasons: no_page_url, bad_page_url, unsupported_url_scheme, no_image, missing_file, unreadable_file, empty,
not_an_image, too_many_pixels, truncated, corrupt, too_small, bad_aspect.
"""
from __future__ import annotations

import io
import warnings
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DecodeConfig, GroupConfig
from .counts import Counts
from .records import RawRecord, Record, hash64
from .urls import URLError, normalize_page_url


class Rejected(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit and float scaled (not clipped), alpha composited on white."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return im.convert("RGB")
    return im


def decode_image(data: bytes, cfg: DecodeConfig) -> tuple[Image.Image, bool]:
    """Returns (RGB image, unchanged) where unchanged means the bytes are already a plain RGB JPEG within
    bounds and can be stored as they are. Raises Rejected(reason)."""
    if not data:
        raise Rejected("empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise Rejected("not_an_image") from None
        except Image.DecompressionBombError:
            raise Rejected("too_many_pixels") from None
        except Exception:  # noqa: BLE001 - any parser failure is a corrupt file
            raise Rejected("corrupt") from None
        w, h = im.size
        if w * h > cfg.max_pixels:
            raise Rejected("too_many_pixels")
        if w <= 0 or h <= 0:
            raise Rejected("corrupt")
        fmt, src_mode = im.format, im.mode
        if fmt == "JPEG" and max(w, h) >= 2 * cfg.max_side:
            im.draft("RGB", (cfg.max_side, cfg.max_side))  # DCT-domain downscale: cheap decode of big JPEGs
        try:
            im.load()
        except Image.DecompressionBombError:
            raise Rejected("too_many_pixels") from None
        except OSError as e:
            raise Rejected("truncated" if "truncat" in str(e).lower() else "corrupt") from None
        except Exception:  # noqa: BLE001
            raise Rejected("corrupt") from None
    rotated = False
    try:
        orientation = im.getexif().get(0x0112, 1)
        if orientation not in (None, 1):
            im = ImageOps.exif_transpose(im)
            rotated = True
    except Exception:  # noqa: BLE001 - broken EXIF: keep the pixels as stored
        pass
    w, h = im.size
    if min(w, h) < cfg.min_side:
        raise Rejected("too_small")
    if max(w, h) / min(w, h) > cfg.max_aspect:
        raise Rejected("bad_aspect")
    rgb = _to_rgb(im)
    resized = False
    if max(rgb.size) > cfg.max_side:
        scale = cfg.max_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.LANCZOS)
        resized = True
    unchanged = fmt == "JPEG" and src_mode == "RGB" and not rotated and not resized and rgb.size == (w, h)
    return rgb, unchanged


def encode_jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_one(raw: RawRecord, cfg: DecodeConfig, group: GroupConfig) -> Record:
    if not raw.page_url:
        raise Rejected("no_page_url")
    try:
        page_key = normalize_page_url(raw.page_url, merge_http_https=group.merge_http_https,
                                      strip_www=group.strip_www)
    except URLError as e:
        raise Rejected(e.reason) from None
    data = raw.image_bytes
    if data is None:
        if not raw.image_path:
            raise Rejected("no_image")
        try:
            with open(raw.image_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise Rejected("missing_file") from None
        except OSError:
            raise Rejected("unreadable_file") from None
    rgb, unchanged = decode_image(data, cfg)
    content_hash = hash64(rgb.tobytes() + f"{rgb.width}x{rgb.height}".encode())
    return Record(key=raw.key, source=raw.source, page_url=str(raw.page_url), page_key=page_key,
                  page_hash=hash64(page_key), image_url=str(raw.image_url or raw.image_path or ""),
                  text=" ".join((raw.text or "").split()), image=data if unchanged else encode_jpeg(rgb, cfg.jpeg_quality),
                  width=rgb.width, height=rgb.height, content_hash=content_hash)


def decode_batch(raws: Iterable[RawRecord], cfg: DecodeConfig, group: GroupConfig, counts: Counts) -> list[Record]:
    """Pure stage function: a batch of raw records -> the valid ones; drops go to counts["decode.dropped.*"]."""
    out: list[Record] = []
    for raw in raws:
        counts.add("decode.in")
        try:
            out.append(decode_one(raw, cfg, group))
        except Rejected as r:
            counts.add(f"decode.dropped.{r.reason}")
            continue
        counts.add("decode.out")
    return out
