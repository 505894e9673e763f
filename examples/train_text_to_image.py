"""Train a tiny text-to-image base stage from scratch on a CPU, end to end.

    python examples/train_text_to_image.py [--out runs/example_t2i] [--steps 300]

1. builds a tiny T5 text encoder + tokenizer locally (suti.tiny; nothing is downloaded),
2. writes a small dataset of coloured shapes as an img2dataset-layout webdataset shard
   ({key}.jpg, {key}.txt, {key}.json),
3. trains the "tiny-base32" stage with the Trainer (EMA, warm-up, checkpoints, sample grids),
4. leaves in --out: metrics.jsonl, samples/step-*.png, checkpoints/, and stage/ (the exported EMA stage).

Run it again with a larger --steps and it resumes from the last checkpoint. The same run from the
command line: `suti train --config configs/train_tiny_base.yaml` (after writing data and a text encoder).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

from suti.tiny import build_tiny_t5
from suti.training import TrainConfig, Trainer

COLOURS = {"red": (215, 35, 35), "green": (40, 170, 60), "blue": (40, 60, 210), "yellow": (235, 200, 40)}
SHAPES = ("square", "circle", "triangle")


def draw(shape: str, rgb, size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d, m = ImageDraw.Draw(img), size // 6
    if shape == "square":
        d.rectangle([m, m, size - m, size - m], fill=rgb)
    elif shape == "circle":
        d.ellipse([m, m, size - m, size - m], fill=rgb)
    else:
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=rgb)
    return img


def write_shapes_shard(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, ((colour, rgb), shape) in enumerate((c, s) for c in COLOURS.items() for s in SHAPES):
            key, caption = f"{i:09d}", f"a {colour} {shape}"
            buf = io.BytesIO()
            draw(shape, rgb).save(buf, format="JPEG", quality=95)
            meta = json.dumps({"url": f"synthetic://{key}", "caption": caption, "page_url": "synthetic://shapes"})
            for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.txt", caption.encode()),
                               (f"{key}.json", meta.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/example_t2i")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)

    t5 = build_tiny_t5(out / "text_encoder")
    shard = write_shapes_shard(out / "data" / "00000.tar")
    config = TrainConfig.from_dict({
        "output_dir": str(out),
        "stage": {"preset": "tiny-base32"},
        "text": {"encoder": str(t5), "max_length": 8},
        "data": {"sources": [str(shard)]},
        "optim": {"lr": 3e-3, "warmup_steps": 20},
        "ema": {"decay": 0.95},
        "sample": {"every": 100, "prompts": [f"a {c} {s}" for c in COLOURS for s in SHAPES[:2]], "steps": 20,
                   "guidance": 2.0},
        "batch_size": 8, "steps": args.steps, "checkpoint_every": 100, "log_every": 25,
    })
    result = Trainer(config).train()
    print(json.dumps(result, indent=2))
    print(f"sample grid: {result.get('samples')}\nexported stage: {result.get('export_dir')}")


if __name__ == "__main__":
    main()
