"""Dataset builder benchmark: pairs/s per stage (CLIP forward excluded and timed apart), CLIP throughput, and
peak memory / cost per record at 10k, 100k and 1M synthetic records (is the local backend flat in N?).

    python benchmarks/builder.py                 # 10k + 100k + 1M, writes benchmarks/results/builder.json
    python benchmarks/builder.py --scales 10000  # quick

Synthetic records are 64x64 JPEGs drawn per record (a planted subject pattern + noise), pages of 6, every
5th page junk; the embedder is the deterministic PlantedEmbedder, so stage timings are the builder's own work.
Each scale runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own.
Also writes benchmarks/results/builder_planted_stats.json: the stats of a run on the planted test corpus.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/ holds scripts named like packages (benchmarks/retrieval.py): keep this folder off sys.path so
# `import retrieval` finds the package, not the sibling script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).resolve().parent / "results"
PER_UNIT = 10_000


def scale_config(n: int, out: Path) -> dict:
    return {
        "inputs": [{"type": "factory", "factory": "dataset_builder.testing:synthetic_records",
                    "units": max(1, n // PER_UNIT), "kwargs": {"records": min(n, PER_UNIT)}}],
        "output_dir": str(out), "progress": False, "records_per_partition": 10_000, "run_size": 10_000,
        "embedder": {"factory": "dataset_builder.testing:planted_embedder", "batch_size": 256},
        "expert": {"type": "held_out", "min_clip_t": -1.0, "min_clip_i": 0.5},
        "report": {"contact_sheet_clusters": 10, "contact_sheet_rejected": 5},
    }


def peak_rss_kib() -> int:
    """VmHWM: this process's own peak RSS. (ru_maxrss is not used: Linux carries it over from the parent
    across fork+exec, so a child of a large parent would report the parent's peak.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_scale(n: int, out: Path) -> dict:
    """In this process: build n synthetic records, report wall time, peak RSS and per-stage timings."""
    from dataset_builder import build_dataset, config_from_dict
    t0 = time.perf_counter()
    stats = build_dataset(config_from_dict(scale_config(n, out)))
    wall = time.perf_counter() - t0
    timings = json.loads((out / "timings.json").read_text())
    peak_kb = peak_rss_kib()
    return {"records": n, "wall_s": round(wall, 2), "us_per_record": round(1e6 * wall / n, 1),
            "peak_rss_mib": round(peak_kb / 1024, 1), "samples": stats["counts"]["write"]["samples"],
            "partitions": stats["partitions"], "cells": stats["cells"], "timings": timings,
            "counts": stats["counts"]}


def stage_rates(r: dict) -> dict:
    """pairs/s per stage = records the stage handled / its seconds, the CLIP forward (timed apart) taken out."""
    t, c = r["timings"], r["counts"]
    clip_embed = t.get("clip_embed_images", 0.0) + t.get("clip_embed_texts", 0.0)
    clip_filter = t.get("clip_filter_images", 0.0) + t.get("clip_filter_texts", 0.0)
    n_read, n_dec = c["read"]["records"], c["decode"]["out"]
    n_group, n_coh, n_final = c["group"]["in"], c["coherence"]["in"], c["dedupe"]["out"]
    rows = {
        "read+synthesise": (n_read, t.get("read", 0)),
        "decode+validate": (n_read, t.get("decode", 0)),
        "spill write (ingest runs + clusters)": (n_dec, t.get("spill", 0)),
        "spill read (partition gather)": (n_dec, t.get("spill_read", 0)),
        "boilerplate (hash ranges)": (n_dec, t.get("boilerplate", 0)),
        "group by page": (n_group, t.get("group", 0)),
        "embed stage without CLIP forward (JPEG decode, batching)": (n_group, t.get("embed", 0) - clip_embed),
        "coherence filter": (n_coh, t.get("coherence", 0)),
        "near-dup within clusters": (n_coh, t.get("dedupe_within", 0)),
        "near-dup corpus-wide (cells + assign + search)": (n_coh, t.get("dedupe_cells", 0)
                                                           + t.get("dedupe_assign", 0) + t.get("dedupe_cross", 0)),
        "load clusters": (n_final, t.get("load", 0)),
        "captions (alt)": (n_final, t.get("captions", 0)),
        "prompts": (n_final, t.get("prompts", 0)),
        "expert (held-out)": (n_final, t.get("expert", 0)),
        "target CLIP filter without CLIP forward": (n_final, t.get("target_filter", 0) - clip_filter),
        "build samples": (n_final, t.get("samples", 0)),
        "write ICL shards": (n_final, t.get("write", 0)),
    }
    out = {k: {"records": n, "seconds": round(s, 3), "pairs_per_s": round(n / s) if s > 0 else None}
           for k, (n, s) in rows.items()}
    out["_excluded: CLIP forward of the planted stand-in (s)"] = round(clip_embed + clip_filter, 3)
    return out


def clip_throughput(n_images: int = 128) -> dict:
    """CLIP forward alone: retrieval.Embedder with ViT-B-32 and a tiny model, random weights (no download)."""
    try:
        from retrieval.embedder import Embedder
    except ImportError:
        return {"skipped": "retrieval.Embedder is not available"}
    import open_clip
    import torch
    from dataset_builder.testing import subject_image
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    images = [subject_image("zorb", i, size=(64, 64)) for i in range(n_images)]
    texts = [f"a photo of a zorb teapot number {i}" for i in range(n_images)]
    out = {}
    tiny = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16,
                                             "head_width": 32},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    for label, cfg, name in (("tiny (64-d, 2 layers, 64 px)", tiny, "bench-tiny-clip"),
                             ("ViT-B-32 (random weights, 224 px)", open_clip.get_model_config("ViT-B-32"),
                              "ViT-B-32")):
        emb = Embedder.from_config(cfg, name=name)
        emb.embed_images(images[:8], batch_size=8)
        t0 = time.perf_counter()
        emb.embed_images(images, batch_size=64)
        ti = time.perf_counter() - t0
        t0 = time.perf_counter()
        emb.embed_texts(texts, batch_size=128)
        tt = time.perf_counter() - t0
        out[label] = {"images_per_s": round(n_images / ti, 1), "texts_per_s": round(n_images / tt, 1),
                      "images": n_images, "threads": torch.get_num_threads()}
    return out


def planted_stats() -> dict:
    from dataset_builder import build_dataset, config_from_dict
    from dataset_builder.testing import make_planted_records, write_img2dataset_shards
    with tempfile.TemporaryDirectory() as tmp:
        rows, _ = make_planted_records()
        shards = write_img2dataset_shards(rows, Path(tmp) / "shards")
        cfg = {"inputs": [{"type": "webdataset", "paths": [str(s) for s in shards]}],
               "output_dir": str(Path(tmp) / "out"), "records_per_partition": 30, "progress": False,
               "decode": {"max_pixels": 20_000_000}, "dedupe": {"cell_size": 25},
               "embedder": {"factory": "dataset_builder.testing:planted_embedder"},
               "expert": {"type": "factory", "factory": "dataset_builder.testing:fake_expert"}}
        return build_dataset(config_from_dict(cfg))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="10000,100000,1000000")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed after)")
    ap.add_argument("--output", default=str(RESULTS / "builder.json"))
    ap.add_argument("--one-scale", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_scale:  # child process: one scale, JSON on stdout
        print(json.dumps(run_scale(args.one_scale, Path(args.out))))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "builder_planted_stats.json").write_text(json.dumps(planted_stats(), indent=1) + "\n")
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "backend": "local", "scales": {},
    }
    scratch = Path(args.workdir or tempfile.mkdtemp(prefix="builder-bench-"))
    for n in [int(s) for s in args.scales.split(",")]:
        out = scratch / f"n{n}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"[builder bench] {n} records ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, "--one-scale", str(n), "--out", str(out)],
                              capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["stages"] = stage_rates(r)
        result["scales"][str(n)] = {k: v for k, v in r.items() if k != "counts"}
        shutil.rmtree(out, ignore_errors=True)
        print(f"[builder bench] {n}: {r['wall_s']} s, {r['us_per_record']} us/record, "
              f"peak {r['peak_rss_mib']} MiB", file=sys.stderr, flush=True)
        ns = sorted(result["scales"], key=int)
        first, last = result["scales"][ns[0]], result["scales"][ns[-1]]
        result["flatness"] = {
            "records_ratio": int(ns[-1]) // int(ns[0]),
            "cost_per_record_ratio": round(last["us_per_record"] / first["us_per_record"], 3),
            "peak_rss_ratio": round(last["peak_rss_mib"] / first["peak_rss_mib"], 3),
        }
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")  # after every scale
    if not args.workdir:
        shutil.rmtree(scratch, ignore_errors=True)
    result["clip_forward"] = clip_throughput()  # last: torch in this process must not inflate anything above
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"flatness": result.get("flatness"), "clip_forward": result["clip_forward"]}, indent=1))


if __name__ == "__main__":
    main()
