"""The shipped world model draws subjects it never saw, from 3 photos each; then your own subject.

    python examples/world_demo.py --out runs/world_demo

The first part is `suti demo` from Python: held-out subjects, SuTI next to text-to-image, judged by the
world's judges (grid.png, index.html, metrics.json). The second part is what a user does: photos of a
subject of their own (here rendered by the world) -> the pipeline -> PIL images.
"""
import argparse
from pathlib import Path

from suti.demo.showcase import SHIPPED_WORLD_SUTI, print_report, run_demo
from suti.demo.world import Context, Subject, render
from suti.images import make_grid
from suti.pipeline import SuTIPipeline

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/world_demo")
ap.add_argument("--subjects", type=int, default=3)
args = ap.parse_args()
out = Path(args.out)

print_report(run_demo(out=out / "heldout", subjects=args.subjects, prompts=4))

# Your own subject: three photos with short captions, and a prompt the photos never showed.
teapot = Subject("mug", "pear", 1, primary="blue", secondary="yellow", accent="red", pattern="dots")
photos = [render(teapot, ctx, size=256, seed=n) for n, ctx in
          enumerate([Context(), Context(scene="wooden floor", position="left"), Context(view="side")])]
pipe = SuTIPipeline.from_pretrained(SHIPPED_WORLD_SUTI)
images = pipe(["a mug in the snow", "a mug wearing a red hat", "a watercolour painting of a mug"],
              subject_images=photos, subject_texts="a photo of a mug", num_images=2, steps=20, guidance=3.0, seed=0)
make_grid([p.resize((64, 64)) for p in photos] + [im.resize((64, 64), 0) for im in images], cols=3).save(out / "own.png")
print("wrote", out / "own.png")
