"""In-context (SuTI) training on a toy task where only the exemplars say what the subject looks like.

    python examples/train_in_context.py [--out runs/example_icl] [--steps 400] [--init-from STAGE_FOLDER]

Each training example is one "subject" (a colour). Its K exemplars are shapes in that colour, captioned
"the subject as a square" etc.; the target is another shape in the same colour, captioned "the subject as
a circle". The captions never name the colour, so the model can only get it from the exemplars. The data
is written as ICL shards in the layout of docs/interfaces.md.

By default a 16 px stage with context attention (small enough to learn the task in ~1000 steps, about
two minutes on one CPU core) starts from scratch. --init-from takes a text-to-image stage folder (e.g.
runs/example_t2i/stage from examples/train_text_to_image.py, 32 px): it is converted to a context stage
(zero-initialised context attention) before training; that larger stage needs several thousand steps
to pick up colour from the exemplars on this task. The sample grid rows are [exemplars..., target, sample].
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import tarfile
from pathlib import Path

from suti.tiny import build_tiny_t5
from suti.training import TrainConfig, Trainer

# A 16 px, two-level U-Net; context attention at the 8 px level and in the middle block.
SMALL_STAGE = {
    "name": "base", "lowres_size": None,
    "unet": {"image_size": 16, "base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": [1, 1],
             "self_attention": [False, True], "cross_attention": [False, True], "context_attention": [False, True],
             "middle_context_attention": True, "head_dim": 16, "num_groups": 4, "text_embed_dim": 64},
}
COLOURS = {"red": (215, 35, 35), "green": (40, 170, 60), "blue": (40, 60, 210), "yellow": (235, 200, 40),
           "purple": (140, 50, 170), "orange": (240, 140, 30)}
SHAPES = ("square", "circle", "triangle")


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_icl_shard(path: Path, k: int = 2) -> Path:
    from train_text_to_image import draw  # same folder

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for c, (colour, rgb) in enumerate(COLOURS.items()):
            for n, target in enumerate(SHAPES):
                key = f"{colour}_{n:04d}"
                others = [s for s in SHAPES if s != target][:k]
                add(f"{key}.target.jpg", _jpeg(draw(target, rgb)))
                add(f"{key}.target.txt", f"the subject as a {target}".encode())
                for i, shape in enumerate(others):
                    add(f"{key}.ex{i}.jpg", _jpeg(draw(shape, rgb)))
                    add(f"{key}.ex{i}.txt", f"the subject as a {shape}".encode())
                add(f"{key}.json", json.dumps({"cluster_id": colour, "k": len(others), "page_url": "synthetic://",
                                               "source_urls": [], "skill": "new view", "expert": "synthetic",
                                               "scores": {"clip_t": 1.0, "clip_i": 1.0}}).encode())
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/example_icl")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--init-from", default=None, help="a text-to-image stage folder to convert and train")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)

    t5 = build_tiny_t5(out / "text_encoder")
    shard = write_icl_shard(out / "data" / "icl-000000.tar")
    config = TrainConfig.from_dict({
        "output_dir": str(out),
        "init_from": args.init_from,
        "stage": {"config": None if args.init_from else SMALL_STAGE},
        "text": {"encoder": str(t5), "max_length": 8},
        "data": {"sources": [str(shard)], "task": "in_context"},
        "optim": {"lr": 2e-3, "warmup_steps": 20},
        "ema": {"decay": 0.95},
        "sample": {"every": 100, "num_held": 6, "steps": 20, "guidance": 2.0},
        "batch_size": 8, "steps": args.steps, "checkpoint_every": 100, "log_every": 25,
    })
    result = Trainer(config).train()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
