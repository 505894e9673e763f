"""Stage 1: decode and validate. Bytes in, RGB JPEG records out; every refusal is counted with a reason.

Drop reasons (decode.dropped.*): no_page_url, bad_page_url, unsupported_url_scheme, no_image, missing_file,
unreadable_file, not_a_regular_file, file_too_large, outside_path_root, empty, not_an_image, too_many_pixels,
truncated, corrupt, too_small, bad_aspect.
Repairs (decode.repaired.*): <field>_lone_surrogate: a text field (key, page URL, image URL, caption) holding
a lone UTF-16 surrogate (truncated web alt text, a non-UTF-8 tar member name) has it replaced by U+FFFD.
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from typing import Iterable

from PIL import Image, ImageOps, UnidentifiedImageError
from retrieval.images import to_rgb

from .config import DecodeConfig, GroupConfig
from .counts import Counts
from .records import RawRecord, Record, hash64
from .urls import URLError, normalize_page_url


class Rejected(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RecordError(RuntimeError):
    """An unexpected failure on one record; the message names its input file and key."""


def read_image_file(path: str, cfg: DecodeConfig) -> bytes:
    """The bytes of a manifest's image file, read safely: only a regular file (a FIFO would block forever,
    /dev/zero would never end), at most cfg.max_file_bytes, and inside cfg.path_root when that is set.
    Raises Rejected(missing_file | unreadable_file | not_a_regular_file | file_too_large | outside_path_root)."""
    if cfg.path_root is not None:
        root = os.path.realpath(cfg.path_root)
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError):  # ValueError: a NUL byte, or a lone surrogate the file system cannot take
            raise Rejected("unreadable_file") from None
        if os.path.commonpath([root, real]) != root:
            raise Rejected("outside_path_root")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat below then refuses it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise Rejected("missing_file") from None
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        raise Rejected("unreadable_file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected("not_a_regular_file")
        if st.st_size > cfg.max_file_bytes:
            raise Rejected("file_too_large")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(cfg.max_file_bytes + 1)  # the size can change under us: never read past the cap
    except OSError:
        raise Rejected("unreadable_file") from None
    finally:
        os.close(fd)
    if len(data) > cfg.max_file_bytes:
        raise Rejected("file_too_large")
    return data


def clean_text(value: str, field: str, counts: Counts | None) -> str:
    """`value` with lone UTF-16 surrogates replaced by U+FFFD (they cannot be encoded, hashed or written);
    counted as decode.repaired.<field>_lone_surrogate."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        if counts is not None:
            counts.add(f"decode.repaired.{field}_lone_surrogate")
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


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
    rgb = to_rgb(im)
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


def decode_one(raw: RawRecord, cfg: DecodeConfig, group: GroupConfig, counts: Counts | None = None) -> Record:
    page_url = raw.page_url
    if not page_url:
        raise Rejected("no_page_url")
    if not isinstance(page_url, str):
        raise Rejected("bad_page_url")
    page_url = clean_text(page_url, "page_url", counts)
    try:
        page_key = normalize_page_url(page_url, merge_http_https=group.merge_http_https,
                                      strip_www=group.strip_www)
    except URLError as e:
        raise Rejected(e.reason) from None
    data = raw.image_bytes
    if data is None:
        if not raw.image_path:
            raise Rejected("no_image")
        data = read_image_file(raw.image_path, cfg)
    elif len(data) > cfg.max_file_bytes:
        raise Rejected("file_too_large")
    rgb, unchanged = decode_image(data, cfg)
    content_hash = hash64(rgb.tobytes() + f"{rgb.width}x{rgb.height}".encode())
    text = raw.text if isinstance(raw.text, str) else ""
    image_url = raw.image_url or raw.image_path or ""
    return Record(key=clean_text(raw.key, "key", counts), source=clean_text(str(raw.source), "source", counts),
                  page_url=page_url, page_key=page_key, page_hash=hash64(page_key),
                  image_url=clean_text(str(image_url), "image_url", counts),
                  text=" ".join(clean_text(text, "text", counts).split()),
                  image=data if unchanged else encode_jpeg(rgb, cfg.jpeg_quality),
                  width=rgb.width, height=rgb.height, content_hash=content_hash)


def decode_batch(raws: Iterable[RawRecord], cfg: DecodeConfig, group: GroupConfig, counts: Counts) -> list[Record]:
    """Pure stage function: a batch of raw records -> the valid ones; drops go to counts["decode.dropped.*"],
    repairs to counts["decode.repaired.*"]. A failure nobody foresaw stops the build with an error that names
    the record's file and key (never a bare traceback from deep inside)."""
    out: list[Record] = []
    for raw in raws:
        counts.add("decode.in")
        try:
            out.append(decode_one(raw, cfg, group, counts))
        except Rejected as r:
            counts.add(f"decode.dropped.{r.reason}")
            continue
        except Exception as e:  # noqa: BLE001 - re-raised, naming the record
            raise RecordError(f"{_printable(raw.source)}: record {_printable(raw.key)}: "
                              f"{type(e).__name__}: {_printable(e)}") from e
        counts.add("decode.out")
    return out


def _printable(value) -> str:
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")
