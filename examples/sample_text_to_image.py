"""Plain text-to-image sampling through the cascade (base -> SR ...), with a seed that reproduces.

    python examples/sample_text_to_image.py --model runs/e2e/t2i --prompt "a red square" --out red.png
"""
import argparse

from suti.images import make_grid
from suti.pipeline import SuTIPipeline

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="runs/e2e/t2i")
ap.add_argument("--prompt", required=True)
ap.add_argument("--steps", type=int, default=50)
ap.add_argument("--guidance", type=float, default=5.0)
ap.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm", "dpmpp_2m", "unipc"])
ap.add_argument("--out", default="samples.png")
args = ap.parse_args()

pipe = SuTIPipeline.from_pretrained(args.model)
images = pipe(args.prompt, num_images=4, steps=args.steps, guidance=args.guidance, sampler=args.sampler, seed=0)
make_grid(images, cols=4).save(args.out)
print("wrote", args.out)
