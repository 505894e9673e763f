"""Build a searchable database of (image, caption) pairs and query it.

    # offline demo: a tiny random CLIP (similarities are meaningless, the mechanics are real)
    python examples/retrieval_build_and_search.py

    # a real model: an open_clip name + pretrained tag (downloaded once by open_clip) ...
    python examples/retrieval_build_and_search.py --model ViT-B-32 --pretrained laion2b_s34b_b79k
    # ... or a folder saved with Embedder.save_pretrained (works offline afterwards)
    python examples/retrieval_build_and_search.py --model local-dir:/models/vit-b-32

    # your own data: img2dataset shards or a folder of images with same-stem .txt captions
    python examples/retrieval_build_and_search.py --shards '/data/{00000..00009}.tar' --db /tmp/pairs-db

Without --shards/--folder it packs the DreamBench photos in ../shared/dreambench (or
generated pictures when that folder is absent) into an img2dataset-style shard first,
including one corrupt JPEG to show how skipped records are reported.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from retrieval import Embedder, PairsDatabase

TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
DREAMBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "dreambench"


def demo_samples():
    """(key, jpeg bytes, caption, page_url) from DreamBench photos, or generated pictures."""
    photos = sorted(DREAMBENCH.glob("*/*.jpg"))
    if photos:
        for path in photos:
            subject = path.parent.name.replace("_", " ")
            yield f"{path.parent.name}_{path.stem}", path.read_bytes(), f"a photo of a {subject}", \
                f"https://example.com/{path.parent.name}"
        return
    rng = np.random.default_rng(0)
    for i in range(24):
        image = Image.new("RGB", (320, 240), tuple(int(c) for c in rng.integers(0, 256, 3)))
        ImageDraw.Draw(image).ellipse([40, 40, 200 + i * 3, 180], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        buf = io.BytesIO()
        image.save(buf, format="JPEG")
        yield f"generated_{i:03d}", buf.getvalue(), f"a coloured ellipse number {i}", "https://example.com/gen"


def write_demo_shard(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for key, jpeg, caption, page in demo_samples():
            add(f"{key}.jpg", jpeg)
            add(f"{key}.txt", caption.encode())
            add(f"{key}.json", json.dumps({"url": f"{page}/{key}.jpg", "caption": caption, "page_url": page}).encode())
        add("broken.jpg", b"\xff\xd8\xff\xe0 this JPEG was cut off")  # reported as skipped, with its reason
        add("broken.txt", b"a corrupt download")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="open_clip name (with --pretrained) or local-dir:FOLDER")
    parser.add_argument("--pretrained")
    parser.add_argument("--shards", nargs="+")
    parser.add_argument("--folder")
    parser.add_argument("--key-prefix", help="prefix for the keys of these sources, e.g. 'run2/' to merge runs")
    parser.add_argument("--db", help="database folder (default: a temporary one)")
    parser.add_argument("--query", default="a photo of a dog")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="retrieval-example-"))
    if args.model:
        embedder = Embedder.from_pretrained(args.model, args.pretrained)
    else:
        torch.manual_seed(0)
        embedder = Embedder.from_config(TINY_CLIP, name="example-tiny-clip")
        # Saving gives the database a spec it can reload the model from on reopen.
        embedder = Embedder.from_pretrained(f"local-dir:{embedder.save_pretrained(work / 'tiny-clip')}")
        print("using a tiny RANDOM CLIP: pass --model for meaningful similarities")
    shards = args.shards
    if not shards and not args.folder:
        shards = [str(write_demo_shard(work / "00000.tar"))]

    db_folder = Path(args.db) if args.db else work / "db"
    # progress=True: bars for shard bytes / folder images (the CLI shows them unless --quiet).
    db, report = PairsDatabase.build(db_folder, embedder, shards=shards, image_folder=args.folder,
                                     key_prefix=args.key_prefix, progress=True)
    print(report.summary())  # added, skipped samples and unreadable shards, each with its reason
    info = db.index_info
    print(db, "search params:", info["search_params"],
          f"tuned recall {info['tuned_recall']} at {info['tuned_at_count']} of {info['count']} records")

    print(f"\ntext query {args.query!r}:")
    for rec in db.search_text(args.query, k=3):
        print(f"  {rec['score']:.3f}  {rec['key']:<20} {rec['caption']!r}  page={rec['page_url']}")

    first = db.get(0)
    exemplar = db.load_image(first)  # the stored image itself, read back from the shard member
    print(f"\nimage query with record {first['key']} ({exemplar.size[0]}x{exemplar.size[1]}):")
    for rec in db.search_image(exemplar, k=3):
        print(f"  {rec['score']:.3f}  {rec['key']}")

    # Reopen from disk: nothing is re-embedded, the index is memory-mapped.
    reopened = PairsDatabase.open(db_folder)
    hits = reopened.search_vector(reopened.embedding(1)[0], k=2)
    print(f"\nreopened {reopened}; vector query for id 1 -> {[h['key'] for h in hits]}")
    print(f"near-duplicate pairs above 0.98: {reopened.near_duplicates(0.98)[:5]}")
    print(f"\ndatabase folder: {db_folder}")


if __name__ == "__main__":
    main()
