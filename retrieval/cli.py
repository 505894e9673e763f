"""Command line for the pairs database: `suti index build`, `suti index search` and `suti index repair`.

The `suti` entry point calls `add_subparsers(subparsers)`; each sub-command sets
`func` to a handler taking the parsed args and returning an exit code. The module
also runs on its own: `python -m retrieval.cli index build ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .atomic import atomic_write_json
from .errors import RetrievalError


def add_subparsers(subparsers) -> argparse.ArgumentParser:
    """Register the `index` command (build, search, repair) on an argparse subparsers object."""
    index = subparsers.add_parser("index", help="build and search a CLIP + FAISS database of image-caption pairs")
    commands = index.add_subparsers(dest="index_command", required=True)

    build = commands.add_parser("build", help="embed webdataset shards and/or an image folder into a database "
                                              "(resumes an interrupted build)")
    build.add_argument("db", help="database folder (created, or resumed if it exists)")
    build.add_argument("--shards", nargs="+", default=None,
                       help="tar shards: paths, globs, brace ranges such as 'data/{00000..00009}.tar', or folders")
    build.add_argument("--folder", default=None, help="folder of images with same-stem .txt captions")
    build.add_argument("--key-prefix", default=None,
                       help="put this in front of every key of the sources given (e.g. 'run2/'), so two "
                            "img2dataset runs or two folders with the same file names can share a database")
    _model_args(build)
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--memory-budget", default=None, help="index memory budget, e.g. 4GB (default: half the free RAM)")
    build.add_argument("--target-recall", type=float, default=0.95,
                       help="recall@10 the index search is tuned for (with --target-latency-ms: kept unless "
                            "it is slower than that)")
    build.add_argument("--target-latency-ms", type=float, default=None,
                       help="mean search time per query the index is tuned to stay within")
    build.add_argument("--report", default=None, help="write the build report (added, skipped keys + reasons) as JSON")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=run_build)

    search = commands.add_parser("search", help="search a database by text, image or vector")
    search.add_argument("db", help="database folder")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="query text")
    query.add_argument("--image", help="query image file")
    query.add_argument("--vector", help=".npy file holding one embedding")
    search.add_argument("-k", type=int, default=10, help="number of results")
    _model_args(search, required=False)
    search.add_argument("--json", action="store_true", help="print results as JSON lines")
    search.set_defaults(func=run_search)

    repair = commands.add_parser("repair", help="check a database and rebuild its index from the stored "
                                                "embeddings when the index file is missing or damaged")
    repair.add_argument("db", help="database folder")
    repair.add_argument("--quiet", action="store_true", help="no progress bars")
    repair.set_defaults(func=run_repair)
    return index


def _model_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--model", default=None,
                        help="open_clip model: architecture name (with --pretrained) or local-dir:FOLDER "
                             "(default for an existing database: the model it was built with)")
    parser.add_argument("--pretrained", default=None, help="pretrained tag or weights file for --model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--allow-different-model", action="store_true",
                        help="use --model even though its weights differ from the model the database was built "
                             "with (only if you know both give the same embeddings)")


def _embedder(args, db_folder: Path):
    """--model if given, else the model recorded in an existing database (None for a new one)."""
    from .database import DB_FILE
    from .embedder import Embedder

    if args.model:
        return Embedder.from_pretrained(args.model, args.pretrained, device=args.device, dtype=args.dtype)
    state_file = db_folder / DB_FILE
    if state_file.is_file():
        spec = json.loads(state_file.read_text()).get("embedder")
        if spec:
            return Embedder.from_pretrained(spec["name"], spec.get("pretrained"), device=args.device,
                                            dtype=args.dtype)
    return None


def run_build(args) -> int:
    from .database import PairsDatabase

    if not args.shards and not args.folder:
        print("error: give --shards and/or --folder", file=sys.stderr)
        return 2
    db_folder = Path(args.db)
    try:
        embedder = _embedder(args, db_folder)
        if embedder is None:
            print("error: --model is required for a new database", file=sys.stderr)
            return 2
        # Bars by default: an index build over many shards runs for hours without one.
        db, report = PairsDatabase.build(db_folder, embedder, shards=args.shards, image_folder=args.folder,
                                         key_prefix=args.key_prefix, memory_budget=args.memory_budget,
                                         target_recall=args.target_recall, target_latency_ms=args.target_latency_ms,
                                         batch_size=args.batch_size, progress=not args.quiet,
                                         allow_different_embedder=args.allow_different_model)
    except (RetrievalError, FileNotFoundError, FileExistsError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    info = db.index_info
    tuned = ""
    if info.get("tuned_recall") is not None:
        measured = info.get("tuned_at_count")
        at = f"measured at {measured} of {len(db)} records" if measured != len(db) else f"{len(db)} records"
        tuned = (f"; tuned recall@{info['k']} {info['tuned_recall']:.3f}, "
                 f"{info['tuned_latency_ms']:.3f} ms/query ({at})")
    print(f"{db}; search params {info.get('search_params', {})}{tuned}")
    if args.report:
        atomic_write_json(args.report, dict(report.to_dict(), records=len(db), index_key=info.get("key"),
                                            index=info))
    return 0


def run_search(args) -> int:
    import numpy as np

    from .database import PairsDatabase

    try:
        embedder = _embedder(args, Path(args.db)) if (args.model or not args.vector) else None
        db = PairsDatabase.open(args.db, embedder, allow_different_embedder=args.allow_different_model)
        if args.text is not None:
            results = db.search_text(args.text, args.k)
        elif args.image is not None:
            results = db.search_image(args.image, args.k)
        else:
            results = db.search_vector(np.load(args.vector, allow_pickle=False), args.k)
    except (RetrievalError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for rank, rec in enumerate(results, 1):
        if args.json:
            print(json.dumps(rec, ensure_ascii=False, default=str))
        else:
            where = rec["path"] if rec["kind"] == "file" else f"{rec['path']}:{rec['member']}"
            print(f"{rank:3d}  {rec['score']:.4f}  {rec['key']}  {rec['caption'][:60]!r}  {where}")
    return 0


def run_repair(args) -> int:
    from .database import PairsDatabase
    from .errors import CorruptIndexError

    try:
        try:
            db = PairsDatabase.open(args.db, allow_different_embedder=True)
            print(f"{db}: index is sound, nothing to repair")
            return 0
        except CorruptIndexError as exc:
            print(f"damaged index: {exc}", file=sys.stderr)
        db = PairsDatabase.open(args.db, repair=True, allow_different_embedder=True)
    except (RetrievalError, FileNotFoundError, ValueError) as exc:
        # A damaged part (vectors or metadata) cannot be rebuilt from the database itself.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{db}: index rebuilt from the stored embeddings")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="retrieval")
    add_subparsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
