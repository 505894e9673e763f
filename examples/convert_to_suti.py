"""Convert a text-to-image checkpoint into a SuTI model: zero-initialised context attention at the
lowest resolution and the middle block. Outputs are identical until the new layers are trained.

    python examples/convert_to_suti.py --model runs/e2e/t2i --out runs/e2e/suti-init
"""
import argparse
import json

from suti.pipeline import SuTIPipeline

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--out", required=True)
args = ap.parse_args()

pipe, report = SuTIPipeline.from_text_to_image(args.model)
pipe.save_pretrained(args.out)
print(json.dumps(report, indent=2))  # parameter growth
