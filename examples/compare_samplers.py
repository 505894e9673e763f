"""Draw one prompt with each sampler from the same seed, side by side: DDIM, DPM-Solver++(2M), UniPC.

    python examples/compare_samplers.py --model ckpt/ --prompt "a red teapot" --out samplers.png

Each row is one sampler at its step count (default: DDIM 50, DPM-Solver++(2M) 20, UniPC 20); the same
seed gives the same starting noise, so the rows differ only by the sampler's integration error.
benchmarks/samplers.py measures that error.
"""
import argparse

from PIL import Image

from suti.pipeline import SuTIPipeline
from suti.sampling import SAMPLERS

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True, help="a pipeline folder (cascade.json + stages)")
ap.add_argument("--prompt", required=True)
ap.add_argument("--runs", nargs="+", default=["ddim:50", "dpmpp_2m:20", "unipc:20"],
                help=f"sampler:steps pairs; samplers: {', '.join(SAMPLERS)}")
ap.add_argument("--num-images", type=int, default=4)
ap.add_argument("--guidance", type=float, default=5.0)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", default="samplers.png")
args = ap.parse_args()

pipe = SuTIPipeline.from_pretrained(args.model)
rows = []
for run in args.runs:
    name, _, steps = run.partition(":")
    if name not in SAMPLERS or not steps.isdigit():
        raise SystemExit(f"--runs: expected sampler:steps with a sampler from {', '.join(SAMPLERS)}, got {run!r}")
    rows.append(pipe(args.prompt, num_images=args.num_images, steps=int(steps), sampler=name,
                     guidance=args.guidance, seed=args.seed))
    print(f"row {len(rows)}: {name}, {steps} steps")
w, h = rows[0][0].size
grid = Image.new("RGB", (w * args.num_images, h * len(rows)))
for r, images in enumerate(rows):
    for c, im in enumerate(images):
        grid.paste(im, (c * w, r * h))
grid.save(args.out)
print("wrote", args.out)
