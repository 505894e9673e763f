"""``suti serve``: the subcommand. Web libraries are imported only when it runs, so the core CLI
works without the ``web`` extra."""
from __future__ import annotations

import ipaddress
import sys


def add_subparser(sub) -> None:
    p = sub.add_parser("serve", help="a local web page to personalise the model from your own photos")
    p.add_argument("--model", default=None,
                   help="SuTI checkpoint folder (default: the model shipped with the package, if any)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to your network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--database", default=None, help="a retrieval PairsDatabase folder: adds a pairs search tab")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for sampling (default: torch's)")
    p.add_argument("--max-upload-mb", type=float, default=100.0, help="largest photo accepted, in MB")
    p.add_argument("--max-queue", type=int, default=8, help="requests that may wait behind the running one")
    p.add_argument("--max-images", type=int, default=8, help="most images per request")
    p.add_argument("--max-steps", type=int, default=250, help="most sampling steps per stage")
    p.set_defaults(func=cmd_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from .app import create_app  # FastAPI
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("fastapi", "starlette", "uvicorn", "anyio"):
            raise
        print(f"suti serve: error: it needs the web extra ({e.name} is missing): pip install \"suti[web]\"",
              file=sys.stderr)
        return 2

    from ..pipeline import SuTIPipeline
    from .settings import ServeSettings, default_model_folder

    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    settings = ServeSettings(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_waiting=args.max_queue,
                             max_images=args.max_images, max_steps=args.max_steps)
    model = args.model or default_model_folder()
    database = None
    if args.database:
        from retrieval import PairsDatabase

        database = PairsDatabase.open(args.database)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pipe = SuTIPipeline.from_pretrained(model, device=args.device)
    loopback = _is_loopback(args.host)
    app = create_app(pipe, settings, database=database, model_name=str(model),
                     allowed_hosts=["127.0.0.1", "localhost", args.host] if loopback and ":" not in args.host else None)
    if not loopback:
        print(f"suti serve: listening on {args.host}: anyone who can reach this address can use the model",
              file=sys.stderr)
    print(f"suti serve: http://{args.host}:{args.port}/ (Ctrl+C stops it)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
