"""Load the world's tiny CLIP through retrieval.Embedder (a local-dir: open_clip folder) and rank
captions for a held-out subject's renders; optionally train a new one from a crawl.

    python examples/world_clip_retrieval.py
    python examples/world_clip_retrieval.py --train-from runs/world_crawl --out runs/world_clip
"""
import argparse

from retrieval import Embedder
from suti.demo.heldout import heldout_subject
from suti.demo.world_clip import SHIPPED_WORLD_CLIP, evaluate_world_clip
from suti.demo.world_clip import main as train_main

ap = argparse.ArgumentParser()
ap.add_argument("--train-from", help="a crawl folder to train a new world CLIP on")
ap.add_argument("--out", default="runs/world_clip")
args = ap.parse_args()

folder = SHIPPED_WORLD_CLIP
if args.train_from:
    train_main(["--crawl", args.train_from, "--out", args.out])
    folder = args.out
clip = Embedder.from_pretrained(f"local-dir:{folder}")
hs = heldout_subject(0)
prompts = [p.prompt for p in hs.prompts]
scores = clip.embed_images(hs.target_images(32)[:5]) @ clip.embed_texts(prompts).T
for i, row in enumerate(scores):
    print(f"truth {prompts[i]!r:45} -> best {prompts[int(row.argmax())]!r}")
print(evaluate_world_clip(clip))
