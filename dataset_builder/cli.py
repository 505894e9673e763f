"""`suti build-dataset --config cfg.yaml`: the lead wires add_subparser() into suti/cli.py.

Standalone: `python -m dataset_builder build-dataset --config cfg.yaml`.
"""
from __future__ import annotations

import argparse
import json
import sys


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Adds the `build-dataset` command to an argparse subparsers object; its handler is set as `func`."""
    p = subparsers.add_parser(
        "build-dataset", help="mine web (page, image, text) pairs into in-context (ICL) training shards",
        description="Build SuTI in-context training shards from img2dataset shards, parquet/jsonl manifests "
                    "or WIT TSV. Reruns resume from per-shard done-markers.")
    p.add_argument("--config", required=True, help="YAML or JSON builder config (see configs/build_dataset*.yaml)")
    p.add_argument("--backend", choices=["local", "ray"], default=None, help="overrides config.backend")
    p.add_argument("--output-dir", default=None, help="overrides config.output_dir")
    p.add_argument("--overwrite", action="store_true", help="delete a previous build in output_dir first")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=handle_build_dataset)
    return p


def handle_build_dataset(args: argparse.Namespace) -> int:
    from .build import build_dataset
    from .config import ConfigError, load_config
    from .decode import RecordError
    from .inputs import InputError
    try:
        cfg = load_config(args.config)
        if args.output_dir:
            cfg.output_dir = args.output_dir
        if args.no_progress:
            cfg.progress = False
        stats = build_dataset(cfg, backend=args.backend, overwrite=args.overwrite)
    except (ConfigError, InputError, FileNotFoundError) as e:
        print(f"suti build-dataset: error: {e}", file=sys.stderr)
        return 2
    except RecordError as e:  # names the input file and record
        print(f"suti build-dataset: error: {e}", file=sys.stderr)
        return 1
    c = stats["counts"]
    summary = {"records": c.get("read", {}).get("records", 0), "samples": c.get("write", {}).get("samples", 0),
               "clusters": c.get("write", {}).get("clusters", 0), "rates": stats["rates"],
               "output_dir": cfg.output_dir}
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataset_builder")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
