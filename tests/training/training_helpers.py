"""Builders for real-format test data: JPEG/PNG bytes in many modes, img2dataset and ICL tar shards."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220), "yellow": (230, 210, 30)}


def image_bytes(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def solid(rgb, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def odd_mode_images() -> dict[str, bytes]:
    """One image per awkward mode, each encoding a known colour (see expected_colour)."""
    rgba = Image.new("RGBA", (24, 24), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 24, 12))  # top half transparent -> white after compositing
    p = Image.new("RGB", (20, 20), (0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    arr16 = np.full((16, 16), 65535 // 2, dtype=np.uint16)
    i16 = Image.fromarray(arr16)
    assert i16.mode.startswith("I;16")
    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # red in CMYK
    return {
        "rgba": image_bytes(rgba, "PNG"),
        "p": image_bytes(p, "PNG"),
        "i16": image_bytes(i16, "PNG"),
        "cmyk": image_bytes(cmyk, "JPEG", quality=95),
    }


def corrupt_jpeg() -> bytes:
    good = image_bytes(solid((10, 200, 10), (64, 64)), "JPEG")
    return good[: len(good) // 3]  # truncated in the middle of the entropy-coded data


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def t2i_members(key: str, img: bytes | None, caption: str | None, ext: str = "jpg", meta: dict | None = None):
    out = []
    if img is not None:
        out.append((f"{key}.{ext}", img))
    if caption is not None:
        out.append((f"{key}.txt", caption.encode("utf-8")))
    out.append((f"{key}.json", json.dumps(meta or {"url": f"http://x/{key}.jpg", "caption": caption,
                                                   "page_url": "http://x/page"}).encode()))
    return out


def icl_members(key: str, target: bytes | None, target_caption: str | None, exemplars: list[tuple[bytes, str]]):
    out = []
    if target is not None:
        out.append((f"{key}.target.jpg", target))
    if target_caption is not None:
        out.append((f"{key}.target.txt", target_caption.encode()))
    for i, (img, cap) in enumerate(exemplars):
        out.append((f"{key}.ex{i}.jpg", img))
        out.append((f"{key}.ex{i}.txt", cap.encode()))
    meta = {"cluster_id": key.split("_")[0], "k": len(exemplars), "page_url": "http://x", "source_urls": [],
            "skill": "recontextualization", "expert": "dreambooth", "scores": {"clip_t": 0.3, "clip_i": 0.8}}
    out.append((f"{key}.json", json.dumps(meta).encode()))
    return out


def colour_folder(root: Path, colours: dict = None, size=(36, 36)) -> Path:
    """A folder of solid-colour PNGs with same-stem captions 'a <colour> square'."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, rgb in (colours or COLOURS).items():
        solid(rgb, size).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(f"a {name} square", encoding="utf-8")
    return root


def mean_rgb(t) -> np.ndarray:
    """(3,H,W) tensor in [-1,1] -> mean colour in 0..255."""
    return ((t.float().mean(dim=(-1, -2)) + 1) * 127.5).numpy()


def draw_shape(shape: str, rgb, size: int = 32) -> Image.Image:
    from PIL import ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    d, m = ImageDraw.Draw(img), size // 6
    if shape == "square":
        d.rectangle([m, m, size - m, size - m], fill=rgb)
    elif shape == "circle":
        d.ellipse([m, m, size - m, size - m], fill=rgb)
    else:
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=rgb)
    return img


# A very small stage (16 px, 2 levels) for tests that check mechanics, not image quality.
MICRO_STAGE = {
    "name": "base",
    "unet": {"image_size": 16, "base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": [1, 1],
             "self_attention": [False, True], "cross_attention": [False, True], "head_dim": 16,
             "text_embed_dim": 64, "num_groups": 4},
    "lowres_size": None,
}


def train_config(tmp_path, t5, source, **over):
    """A TrainConfig dict for a short CPU run; ``over`` entries replace top-level keys or update sections."""
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "stage": {"config": MICRO_STAGE},
        "text": {"encoder": t5, "max_length": 8},
        "data": {"sources": [source]},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "ema": {"decay": 0.9},
        "sample": {"steps": 2, "guidance": 2.0, "num_held": 2},
        "batch_size": 2, "steps": 4, "checkpoint_every": 1000, "log_every": 1, "progress": False,
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg
