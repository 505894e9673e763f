"""Build an ICL dataset from a planted web corpus, offline, in seconds.

    python examples/build_dataset_planted.py [workdir]        # workdir defaults to ./planted_demo

Writes img2dataset-style shards to <workdir>/shards, builds <workdir>/icl with the local builder and the
deterministic test embedder and expert, and prints where the shards, stats and contact sheet are.

Run from the repository root, it writes the folder that configs/build_dataset_planted.yaml names (relative paths
in a config file resolve against the file's folder: configs/../planted_demo), so afterwards
`suti build-dataset --config configs/build_dataset_planted.yaml` is the same build (a no-op rerun).
Swap the embedder/expert sections for open_clip and DreamBooth to run on real data (configs/build_dataset.yaml).
"""
import json
import os
import sys
from pathlib import Path

from dataset_builder import build_dataset, config_from_dict, read_icl_shard
from dataset_builder.testing import make_planted_records, write_img2dataset_shards


def planted_config(root) -> dict:
    """The settings of configs/build_dataset_planted.yaml, with absolute paths under `root`."""
    root = Path(os.path.abspath(root))  # abspath, as config files resolve theirs: same paths, same fingerprint
    return {
        "inputs": [{"type": "webdataset", "paths": str(root / "shards" / "*.tar")}],
        "output_dir": str(root / "icl"),
        "records_per_partition": 30,
        "decode": {"max_pixels": 20_000_000},
        "embedder": {"factory": "dataset_builder.testing:planted_embedder"},
        "expert": {"type": "factory", "factory": "dataset_builder.testing:fake_expert",
                   "min_clip_t": 0.2, "min_clip_i": 0.7},
        "dedupe": {"cell_size": 25},
    }


def main(root: Path) -> None:
    rows, expected = make_planted_records()
    write_img2dataset_shards(rows, root / "shards", n_shards=3)
    cfg = config_from_dict(planted_config(root))
    stats = build_dataset(cfg)
    shard_files = sorted(Path(cfg.output_dir).glob("icl-*.tar"))
    first = next(read_icl_shard(shard_files[0]))
    print(json.dumps(stats["rates"], indent=1))
    print("clusters kept:", stats["counts"]["write"]["clusters"], "expected:", len(expected["kept_pages"]))
    print("example sample:", first["__key__"], "|", first["target.txt"], "|", first["json"]["scores"])
    print("shards:", cfg.output_dir)
    print("contact sheet:", Path(cfg.output_dir) / "contact_sheet.html")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "planted_demo"))
