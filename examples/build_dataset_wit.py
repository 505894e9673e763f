"""WIT TSV (with local image files or base64 bytes) -> ICL shards, with the naive held-out expert.

    python examples/build_dataset_wit.py wit.tsv out_dir --clip local-dir:models/open_clip_vit_b32

WIT lists page_url, image_url and caption columns; images must be local (image_path column, relative to
--image-root) or inline (b64_bytes column), since the builder never downloads. WIT's TSVs use standard CSV
quoting (the reader's default, quoting: minimal). Paths here are relative to the working directory; the config
file version, configs/build_dataset_wit.yaml, gives them relative to its own folder.
"""
import argparse
import json

from dataset_builder import build_dataset, config_from_dict

ap = argparse.ArgumentParser()
ap.add_argument("tsv", nargs="+")
ap.add_argument("output_dir")
ap.add_argument("--image-root", default=None)
ap.add_argument("--clip", default="ViT-B-32")
ap.add_argument("--pretrained", default=None)
args = ap.parse_args()

spec = {"type": "wit", "paths": args.tsv, "image_b64_col": "b64_bytes", "image_path_col": "image_path"}
if args.image_root:
    spec["image_root"] = args.image_root
cfg = config_from_dict({"inputs": [spec], "output_dir": args.output_dir,
                        "embedder": {"model": args.clip, "pretrained": args.pretrained},
                        "expert": {"type": "held_out"}})
print(json.dumps(build_dataset(cfg)["rates"], indent=1))
