"""img2dataset shards -> SuTI ICL shards with real CLIP and a chosen expert.

1. Download pairs with their page URL (img2dataset keeps it in each sample's .json):
     img2dataset --url_list pairs.parquet --input_format parquet --url_col url --caption_col caption \\
       --save_additional_columns '["page_url"]' --output_format webdataset --output_folder web_shards
2. python examples/build_dataset_img2dataset.py "web_shards/{00000..00009}.tar" out_dir \\
       --clip ViT-B-32 --pretrained laion2b_s34b_b79k [--dreambooth checkpoints/t2i-base] [--backend ray]

Paths given here on the command line are relative to the working directory. The same run from a config file:
suti build-dataset --config configs/build_dataset.yaml (paths in a config file are relative to the file's folder,
so that config names web_shards/ in the repository root as ../web_shards).
"""
import argparse
import json

from dataset_builder import build_dataset, config_from_dict

ap = argparse.ArgumentParser()
ap.add_argument("shards")
ap.add_argument("output_dir")
ap.add_argument("--clip", default="ViT-B-32", help="open_clip name or local-dir:/path")
ap.add_argument("--pretrained", default=None)
ap.add_argument("--device", default="cpu")
ap.add_argument("--dreambooth", default=None, help="SuTIPipeline folder; default: held-out baseline expert")
ap.add_argument("--backend", default="local", choices=["local", "ray"])
args = ap.parse_args()

expert = {"type": "held_out"}
if args.dreambooth:
    expert = {"type": "dreambooth", "kwargs": {"pipeline": args.dreambooth, "dreambooth": {"steps": 400},
                                               "sample_kwargs": {"stop_at": 0},
                                               "pipeline_kwargs": {"device": args.device}}}
cfg = config_from_dict({
    "inputs": [{"type": "webdataset", "paths": args.shards}],
    "output_dir": args.output_dir,
    "embedder": {"model": args.clip, "pretrained": args.pretrained, "device": args.device},
    "expert": expert,
})
stats = build_dataset(cfg, backend=args.backend)
print(json.dumps({"counts": stats["counts"].get("write"), "rates": stats["rates"]}, indent=1))
