"""Serve a SuTI checkpoint as a local web page: upload 1-5 photos, write a prompt, download the results.

    pip install -e ".[web]"
    python examples/serve.py --model runs/e2e/suti          # then open http://127.0.0.1:7860/
    python examples/serve.py --model runs/e2e/suti --database pairs-db   # adds the pairs search tab

Without --model it serves the model shipped with the package, or, when there is none, a tiny random
checkpoint built here in a temporary folder (its images are noise: it only shows the page working).
The same server is the `suti serve` command; this script shows the Python API behind it.
"""
import argparse
import tempfile

import uvicorn

from suti.pipeline import SuTIPipeline
from suti.serve import ServeSettings, default_model_folder
from suti.serve.app import create_app

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=None)
ap.add_argument("--database", default=None, help="a retrieval PairsDatabase folder")
ap.add_argument("--port", type=int, default=7860)
args = ap.parse_args()


def tiny_random_checkpoint(folder):
    import torch

    from suti.pipeline import new_pipeline
    from suti.presets import preset
    from suti.text import TextEncoder
    from suti.tiny import build_tiny_t5

    enc = TextEncoder.from_pretrained(build_tiny_t5(), max_length=16)
    pipe = new_pipeline(enc, [preset("tiny-base32", text_embed_dim=enc.dim, context=True, stage_name="base"),
                              preset("tiny-sr64", text_embed_dim=enc.dim, stage_name="sr64")])
    for name, p in pipe.cascade.named_parameters():  # non-zero output layers, so the page shows something
        if "out" in name and p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.05)
    return pipe.save_pretrained(folder)


with tempfile.TemporaryDirectory() as tmp:
    model = args.model
    if model is None:
        try:
            model = default_model_folder()
        except FileNotFoundError:
            print("no --model and no shipped model: serving a tiny random checkpoint (its images are noise)")
            model = tiny_random_checkpoint(f"{tmp}/tiny")
    database = None
    if args.database:
        from retrieval import PairsDatabase

        database = PairsDatabase.open(args.database)
    app = create_app(SuTIPipeline.from_pretrained(model), ServeSettings(max_upload_bytes=20 * 1024 * 1024),
                     database=database, model_name=str(model))
    print(f"open http://127.0.0.1:{args.port}/ (Ctrl+C stops it)")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
