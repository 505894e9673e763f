"""Build an ICL dataset from a good corpus mixed with damaged and odd records, and account for every record.

    python examples/build_dataset_damaged.py [workdir]        # workdir defaults to ./damaged_demo

Writes the planted corpus (3 good shards) and the damaged corpus of dataset_builder.faults (torn and corrupt
tars, odd sidecars and captions, lone surrogates, duplicate keys, FIFOs and /dev/zero in a manifest ...) under
<workdir>, builds <workdir>/icl with the offline test embedder and expert, and prints the accounting: records
written = records read + records dropped while reading + lines that were not JSON + samples past a tear; and
records read = kept by decode + each decode drop. Every damaged shard is listed in stats.json's read_errors.
"""
import os
import sys
from pathlib import Path

from dataset_builder import build_dataset, config_from_dict
from dataset_builder.faults import MAX_FILE_BYTES, write_damaged_corpus
from dataset_builder.testing import make_planted_records, write_img2dataset_shards


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def main(root: Path) -> int:
    root = Path(os.path.abspath(root))
    rows, expected = make_planted_records()
    good = write_img2dataset_shards(rows, root / "shards", n_shards=3)
    corpus = write_damaged_corpus(root / "damaged")
    cfg = config_from_dict({
        "inputs": [{"type": "webdataset", "paths": [str(p) for p in good] + corpus.webdataset},
                   {"type": "jsonl", "path": corpus.manifest, "image_root": corpus.image_root}],
        "output_dir": str(root / "icl"), "records_per_partition": 30, "run_size": 20, "progress": False,
        # max_file_bytes: the size cap for any image; path_root: manifest paths must stay inside this folder
        "decode": {"max_pixels": 20_000_000, "max_file_bytes": MAX_FILE_BYTES, "path_root": corpus.image_root},
        "embedder": {"factory": "dataset_builder.testing:planted_embedder"},
        "expert": {"type": "factory", "factory": "dataset_builder.testing:fake_expert"},
        "dedupe": {"cell_size": 25},
    })
    stats = build_dataset(cfg, overwrite=True)
    c = _flat(stats["counts"])
    written = len(rows) + corpus.records_written
    read_drops = {k: v for k, v in c.items() if k.startswith("read.dropped.")}
    decode_drops = {k: v for k, v in c.items() if k.startswith("decode.dropped.")}
    print(f"records written: {written} ({len(rows)} good, {corpus.records_written} damaged or odd)")
    print(f"  read {c['read.records']} + dropped while reading {sum(read_drops.values())} {read_drops}")
    print(f"  + lines that were not JSON {c.get('read.errors.bad_json_line', 0)} + past a tear {corpus.unseen}"
          f" = {c['read.records'] + sum(read_drops.values()) + c.get('read.errors.bad_json_line', 0) + corpus.unseen}")
    print(f"records read {c['decode.in']} = kept by decode {c['decode.out']} + dropped {sum(decode_drops.values())}")
    for k, v in sorted(decode_drops.items()):
        print(f"  {k}: {v}")
    print("repairs:", {k: v for k, v in sorted(c.items()) if ".repaired." in k})
    skipped = {k: v for k, v in sorted(c.items()) if k.startswith("read.skipped.")}
    print("skipped tar members and empty shards:", skipped)
    print("read errors (file, reason):")
    for e in stats["read_errors"]:
        print(f"  {os.path.relpath(e['file'], root)}: {e['reason']}")
    print("clusters kept:", c.get("write.clusters"), "expected:", len(expected["kept_pages"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "damaged_demo")))
