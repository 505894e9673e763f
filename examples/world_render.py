"""Draw subjects of the procedural world in contexts a prompt describes, as a contact sheet.

    python examples/world_render.py --out world_sheet.png --size 64
"""
import argparse
import random

from PIL import Image

from suti.demo.world import random_subject, render_prompt

PROMPTS = ["a {n}", "a {n} on the beach", "a small {n} on the left in the snow", "a blue {n}",
           "a {n} wearing a red hat", "a pencil sketch of a {n}", "a watercolour painting of a {n} in the jungle",
           "a {n} seen from the side", "a big {n} in outer space seen from behind"]

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="world_sheet.png")
ap.add_argument("--size", type=int, default=64)
ap.add_argument("--subjects", type=int, default=4)
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()

rng = random.Random(args.seed)
subjects = [random_subject(rng) for _ in range(args.subjects)]
sheet = Image.new("RGB", (args.size * len(PROMPTS), args.size * len(subjects)), "white")
for row, subject in enumerate(subjects):
    print(subject.id)
    for col, template in enumerate(PROMPTS):
        image = render_prompt(subject, template.format(n=subject.noun), size=args.size, seed=row * 100 + col)
        sheet.paste(image, (col * args.size, row * args.size))
sheet.save(args.out)
print("columns:", [p.format(n="<subject>") for p in PROMPTS], "->", args.out)
