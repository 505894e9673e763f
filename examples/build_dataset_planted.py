"""Build an ICL dataset from a planted web corpus, offline, in seconds.

    python examples/build_dataset_planted.py [workdir]

Writes img2dataset-style shards, runs the local builder with the deterministic test embedder and expert, and
prints where the shards, stats and contact sheet are. Swap the embedder/expert sections of the config for
open_clip and DreamBooth to run on real data (configs/build_dataset.yaml).
"""
import json
import sys
from pathlib import Path

from dataset_builder import build_dataset, config_from_dict, read_icl_shard
from dataset_builder.testing import make_planted_records, write_img2dataset_shards

root = Path(sys.argv[1] if len(sys.argv) > 1 else "planted_demo")
rows, expected = make_planted_records()
shards = write_img2dataset_shards(rows, root / "shards", n_shards=3)
cfg = config_from_dict({
    "inputs": [{"type": "webdataset", "paths": [str(p) for p in shards]}],
    "output_dir": str(root / "icl"),
    "records_per_partition": 30,
    "decode": {"max_pixels": 20_000_000},
    "embedder": {"factory": "dataset_builder.testing:planted_embedder"},
    "expert": {"type": "factory", "factory": "dataset_builder.testing:fake_expert"},
    "dedupe": {"cell_size": 25},
})
stats = build_dataset(cfg)
shard_files = sorted((root / "icl").glob("icl-*.tar"))
first = next(read_icl_shard(shard_files[0]))
print(json.dumps(stats["rates"], indent=1))
print("clusters kept:", stats["counts"]["write"]["clusters"], "expected:", len(expected["kept_pages"]))
print("example sample:", first["__key__"], "|", first["target.txt"], "|", first["json"]["scores"])
print("contact sheet:", root / "icl" / "contact_sheet.html")
