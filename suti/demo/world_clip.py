"""A tiny CLIP for the subject world: an open_clip model trained contrastively on the crawl's pairs.

It is saved as an open_clip `local-dir:` folder (`open_clip_config.json` + `open_clip_model.safetensors`,
weights stored in float16 to keep the shipped folder small), so `retrieval.Embedder` loads it like any
CLIP and the dataset builder's CLIP filters mean something in this world:

    emb = Embedder.from_pretrained(f"local-dir:{SHIPPED_WORLD_CLIP}")

Train it again (writes a crawl first when the folder has none; about 7 minutes on one CPU core):

    OMP_NUM_THREADS=1 python -m suti.demo.world_clip --crawl runs/world_clip_crawl --out suti/demo/assets/world_clip
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from retrieval.atomic import atomic_path, atomic_write_json
from retrieval.embedder import CONFIG_FILE, WEIGHTS_FILE, Embedder
from retrieval.shards import iter_tar_samples

from .heldout import NUM_HELDOUT, heldout_subject, heldout_subjects
from .world import SCENES, Context, prompt_for, render

SHIPPED_WORLD_CLIP = Path(__file__).resolve().parent / "assets" / "world_clip"
WORLD_CLIP_NAME = "world-clip-tiny"
# open_clip's own BPE tokenizer (49408 tokens) works offline; the text tower is narrow so the token
# table stays small.
WORLD_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def read_crawl_pairs(crawl_dir: str | os.PathLike) -> tuple[list[Image.Image], list[str], Counter]:
    """(images, captions, skipped-by-reason) from the crawl's webdataset shards. Records without a
    caption or with an unreadable image are skipped and counted by reason."""
    shards = sorted(Path(crawl_dir).glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no .tar shards in crawl folder {crawl_dir}")
    images, captions, skipped = [], [], Counter()
    for shard in shards:
        parts = {}

        def fail(problem, shard=shard):
            if problem.reason.startswith("member_") or problem.reason == "empty":
                skipped[f"tar_{problem.reason}"] += 1
                return
            raise ValueError(f"cannot read crawl shard {shard}: {problem.reason} ({problem.detail})")

        for sample in iter_tar_samples(shard, fail):
            parts[sample.key] = sample.members
        for key, p in parts.items():
            caption = p.get("txt", b"").decode("utf-8", errors="replace").strip()
            if not caption:
                skipped["no_caption"] += 1
                continue
            try:
                image = Image.open(io.BytesIO(p["jpg"]))
                image.load()
            except (KeyError, OSError, UnidentifiedImageError):
                skipped["unreadable_image"] += 1
                continue
            images.append(image.convert("RGB"))
            captions.append(caption)
    return images, captions, skipped


def new_world_clip(seed: int = 0) -> Embedder:
    torch.manual_seed(seed)
    return Embedder.from_config(WORLD_CLIP_CONFIG, name=WORLD_CLIP_NAME)


def train_world_clip(images: list[Image.Image], captions: list[str], epochs: int = 20, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, progress: bool = True) -> Embedder:
    """Symmetric InfoNCE over (image, caption) pairs; returns the trained Embedder (eval mode)."""
    if len(images) != len(captions) or not images:
        raise ValueError(f"need matching, non-empty images and captions, got {len(images)} and {len(captions)}")
    emb = new_world_clip(seed)
    model = emb.model
    pixels = torch.stack([emb.preprocess(im) for im in images])
    tokens = emb.tokenizer(captions)
    n = len(images)
    steps = epochs * math.ceil(n / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=steps, desc="training world CLIP", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            img = F.normalize(model.encode_image(pixels[idx]), dim=-1)
            txt = F.normalize(model.encode_text(tokens[idx]), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
            # identical captions in a batch are both right answers
            same = torch.tensor([[captions[i] == captions[j] for j in idx.tolist()] for i in idx.tolist()])
            target = same.float() / same.sum(1, keepdim=True)
            loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                          + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return emb


def save_world_clip(emb: Embedder, folder: str | os.PathLike, metrics: dict | None = None) -> Path:
    """The local-dir: layout Embedder reads, with float16 weights (half the size; loaded back as float32)."""
    folder = Path(folder)
    emb.save_pretrained(folder)
    weights = folder / WEIGHTS_FILE
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(weights)).items()}
    with atomic_path(weights, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o644)  # safetensors writes owner-only files; models are shared
    if metrics is not None:
        atomic_write_json(folder / "metrics.json", metrics)
    return folder


def load_world_clip(folder: str | os.PathLike | None = None) -> Embedder:
    folder = Path(folder) if folder is not None else SHIPPED_WORLD_CLIP
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no world CLIP in {folder} (train one: python -m suti.demo.world_clip --out FOLDER)")
    return Embedder.from_pretrained(f"local-dir:{folder}")


def evaluate_world_clip(emb: Embedder, size: int = 32, seed: int = 0, scene_queries: int = 4) -> dict:
    """Image->text retrieval on held-out subjects (never in the crawl):
    - benchmark: each ground-truth render of the 25 benchmark prompts ranks its subject's 25 prompts
      (chance 0.04);
    - scene: fresh renders in each of the 7 scenes rank the 7 scene captions (chance 1/7)."""
    hits, total = 0, 0
    for i in range(NUM_HELDOUT):
        hs = heldout_subject(i)
        img = emb.embed_images(hs.target_images(size))
        txt = emb.embed_texts([p.prompt for p in hs.prompts])
        hits += int(((img @ txt.T).argmax(1) == np.arange(len(hs.prompts))).sum())
        total += len(hs.prompts)
    rng = random.Random(f"clip-eval:{seed}")
    scenes = list(SCENES)
    s_hits, s_total = 0, 0
    for subject in heldout_subjects():
        for _ in range(scene_queries):
            j = rng.randrange(len(scenes))
            image = render(subject, Context(scene=scenes[j]), size=size, seed=rng.randrange(2**31), jitter=0.05)
            txt = emb.embed_texts([prompt_for(subject.noun, Context(scene=s)) for s in scenes])
            s_hits += int((emb.embed_images([image]) @ txt.T).argmax() == j)
            s_total += 1
    return {"benchmark_prompt_top1": hits / total, "benchmark_chance": 1 / 25,
            "scene_top1": s_hits / s_total, "scene_chance": 1 / len(scenes), "queries": total + s_total}


def main(argv: list[str] | None = None) -> dict:
    from .crawl import CrawlConfig, write_crawl

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crawl", required=True, help="crawl folder (written first if it has no shards)")
    ap.add_argument("--shop-pages", type=int, default=400, help="size of the crawl written when there is none")
    ap.add_argument("--out", default=str(SHIPPED_WORLD_CLIP))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not list(Path(args.crawl).glob("*.tar")):
        write_crawl(args.crawl, CrawlConfig(shop_pages=args.shop_pages, junk_pages=args.shop_pages // 5, seed=args.seed))
    images, captions, skipped = read_crawl_pairs(args.crawl)
    print(f"{len(images)} pairs; skipped {dict(skipped)}")
    t0 = time.time()
    emb = train_world_clip(images, captions, epochs=args.epochs, seed=args.seed)
    metrics = {"pairs": len(images), "skipped": dict(skipped), "epochs": args.epochs,
               "train_seconds": round(time.time() - t0, 1), "heldout": evaluate_world_clip(emb)}
    save_world_clip(emb, args.out, metrics)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
