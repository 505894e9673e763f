"""Helpers shared by the dataset_builder tests (a unique module name: tests/ folders are not packages)."""
import json
from pathlib import Path

FAKE_EMBEDDER = {"factory": "dataset_builder.testing:planted_embedder"}
FAKE_EXPERT = {"type": "factory", "factory": "dataset_builder.testing:fake_expert"}


def planted_config(shards, out_dir: Path, **overrides) -> dict:
    cfg = {
        "inputs": [{"type": "webdataset", "paths": [str(s) for s in shards]}],
        "output_dir": str(out_dir), "records_per_partition": 30, "run_size": 20, "progress": False,
        "decode": {"max_pixels": 20_000_000},
        "embedder": dict(FAKE_EMBEDDER), "expert": dict(FAKE_EXPERT),
        "dedupe": {"cell_size": 25},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def output_files(out_dir: Path) -> dict[str, bytes]:
    """The files a build promises to reproduce exactly (timings.json is wall-clock and excluded)."""
    names = sorted(p.name for p in out_dir.glob("icl-*.tar")) + ["manifest.json", "stats.json", "contact_sheet.html"]
    return {n: (out_dir / n).read_bytes() for n in names}


BIG_PAGE = "https://big.example.com/catalogue"


def big_page_records(unit: int, big: int = 40, pages: int = 3, per_page: int = 5):
    """A factory input: `pages` coherent pages of `per_page` images and one catalogue page of `big` images."""
    from dataset_builder.records import RawRecord
    from dataset_builder.testing import SUBJECT_WORDS, jpeg_bytes, random_image, subject_image
    n = 0
    for p in range(pages):
        for v in range(per_page):
            word = SUBJECT_WORDS[p]
            yield RawRecord(key=f"{unit}:{n}", source="big", page_url=f"https://shop.example.com/{word}",
                            image_url=f"https://cdn/{word}/{v}.jpg", text=f"{word} lamp {v}",
                            image_bytes=jpeg_bytes(subject_image(word, v)))
            n += 1
    for v in range(big):
        yield RawRecord(key=f"{unit}:{n}", source="big", page_url=BIG_PAGE, image_url=f"https://cdn/big/{v}.jpg",
                        text=f"catalogue item {v}", image_bytes=jpeg_bytes(random_image(f"big{v}")))
        n += 1
