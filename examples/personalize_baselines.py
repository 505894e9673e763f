"""The per-subject baselines on the same cascade: DreamBooth (fine-tunes the base stage) and Textual
Inversion (learns one token embedding). Compare with SuTI, which needs neither.

    python examples/personalize_baselines.py --model runs/e2e/t2i \
        --subject ../shared/dreambench/dog/00.jpg ../shared/dreambench/dog/01.jpg --class-noun dog --out runs/baselines
"""
import argparse
from pathlib import Path

from suti.images import make_grid
from suti.personalize import DreamBoothConfig, TextualInversionConfig, dreambooth, textual_inversion
from suti.pipeline import SuTIPipeline

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--subject", nargs="+", required=True)
ap.add_argument("--class-noun", required=True)
ap.add_argument("--steps", type=int, default=400)
ap.add_argument("--out", default="runs/baselines")
args = ap.parse_args()
out = Path(args.out)

pipe = SuTIPipeline.from_pretrained(args.model)
db = dreambooth(pipe, args.subject, args.class_noun, DreamBoothConfig(steps=args.steps, lr=1e-4))
db.save_pretrained(out / "dreambooth")  # only the fine-tuned base stage
make_grid(db.pipe(db.prompt("{subject} on the beach"), num_images=4, seed=0), cols=4).save(out / "dreambooth.png")

ti = textual_inversion(pipe, args.subject, args.class_noun, TextualInversionConfig(steps=args.steps))
ti.save(out / "textual_inversion.safetensors")  # a few KB
make_grid(pipe(f"a photo of {ti.token} on the beach", num_images=4, seed=0), cols=4).save(out / "ti.png")
print("wrote", out)
