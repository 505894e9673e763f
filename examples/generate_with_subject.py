"""Subject-driven generation: 1-5 photos of a subject + a prompt -> new images, one sampling pass.

    python examples/generate_with_subject.py --model runs/e2e/suti \
        --subject ../shared/dreambench/dog/00.jpg ../shared/dreambench/dog/01.jpg ../shared/dreambench/dog/02.jpg \
        --subject-text "a photo of a dog" --prompt "a dog on the beach" --out dog_beach.png
"""
import argparse

from suti.images import make_grid
from suti.pipeline import SuTIPipeline

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="runs/e2e/suti")
ap.add_argument("--subject", nargs="+", required=True)
ap.add_argument("--subject-text", default="a photo")
ap.add_argument("--prompt", required=True)
ap.add_argument("--guidance", type=float, default=3.0)
ap.add_argument("--guidance-mode", default="interleaved", choices=["text", "context", "joint", "interleaved"])
ap.add_argument("--steps", type=int, default=50)
ap.add_argument("--out", default="generated.png")
args = ap.parse_args()

pipe = SuTIPipeline.from_pretrained(args.model)
images = pipe(args.prompt, subject_images=args.subject, subject_texts=args.subject_text, num_images=4,
              guidance=args.guidance, guidance_mode=args.guidance_mode, steps=args.steps, seed=0, progress=True)
make_grid(images, cols=4).save(args.out)
print("wrote", args.out)
