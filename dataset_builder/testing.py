"""Planted corpora and stand-ins for tests, examples and benchmarks (no model downloads).

PlantedEmbedder is a deterministic CLIP stand-in with the Embedder API: an image's embedding is its centred
8x8 RGB thumbnail; a text's embedding is the planted pattern of the subject words it mentions. Images drawn
from a subject's pattern (`subject_image`) therefore embed near that pattern, and the prompts naming the
subject embed there too, so coherence, near-dup and CLIP-T/CLIP-I filters all have real work to do.
"""
from __future__ import annotations

import functools
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .records import RawRecord, Target, hash64

GRID = 8
SCALE = 48.0


GRAY_SUBJECTS = frozenset({"zorb"})  # a grey subject, so its 16-bit greyscale PNG view is a faithful copy


def subject_pattern(word: str) -> np.ndarray:
    rng = np.random.default_rng(hash64("pattern:" + word))
    if word in GRAY_SUBJECTS:
        return np.repeat(rng.normal(size=(GRID, GRID, 1)), 3, axis=2)
    return rng.normal(size=(GRID, GRID, 3))


def grid_image(grid: np.ndarray, size: tuple[int, int]) -> Image.Image:
    px = np.clip(128 + SCALE * grid, 0, 255).astype(np.uint8)
    return Image.fromarray(px, "RGB").resize(size, Image.NEAREST)


def subject_image(word: str, view: int, size=(96, 96), spread: float = 0.45) -> Image.Image:
    """View `view` of subject `word`: its pattern plus view-specific noise (cosine ~0.8 between views)."""
    noise = np.random.default_rng(hash64(f"view:{word}:{view}")).normal(size=(GRID, GRID, 3))
    return grid_image(subject_pattern(word) + spread * noise, size)


def random_image(seed: str, size=(96, 96)) -> Image.Image:
    return grid_image(np.random.default_rng(hash64("rand:" + seed)).normal(size=(GRID, GRID, 3)), size)


def jpeg_bytes(im: Image.Image, quality: int = 92, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()


def png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


class PlantedEmbedder:
    """Deterministic Embedder stand-in (see module docstring). `dim` = 192."""

    dim = GRID * GRID * 3

    def __init__(self, subjects: list[str] | None = None, delay_s: float = 0.0):
        words = SUBJECT_WORDS if subjects is None else subjects
        self.subjects = {w.lower(): subject_pattern(w.lower()).reshape(-1) for w in words}
        self.delay_s = delay_s

    @staticmethod
    def _norm(x: np.ndarray) -> np.ndarray:
        return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)

    def embed_images(self, images, batch_size: int = 64, progress=None) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for im in images:
            im = Image.open(im) if isinstance(im, (str, Path)) else im
            small = np.asarray(im.convert("RGB").resize((GRID, GRID), Image.BOX), dtype=np.float32)
            out.append(((small - 128.0) / SCALE).reshape(-1))
        return self._norm(np.stack(out)) if out else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts, batch_size: int = 256, progress=None) -> np.ndarray:
        out = []
        for t in texts:
            words = [w.strip(".,!?;:'\"()").lower() for w in str(t).split()]
            hits = [self.subjects[w] for w in words if w in self.subjects]
            if hits:
                out.append(np.sum(hits, axis=0))
            else:
                out.append(np.random.default_rng(hash64("text:" + str(t))).normal(size=self.dim))
        return self._norm(np.stack(out)) if out else np.zeros((0, self.dim), np.float32)

    def image_text_scores(self, image_emb, text_emb) -> np.ndarray:
        return np.sum(np.asarray(image_emb) * np.asarray(text_emb), axis=1)

    def image_image_scores(self, a, b) -> np.ndarray:
        return np.sum(np.asarray(a) * np.asarray(b), axis=1)


def planted_embedder(subjects: list[str] | None = None, delay_s: float = 0.0) -> PlantedEmbedder:
    return PlantedEmbedder(subjects, delay_s)


class FakeExpert:
    """Expert stand-in: renders the cluster's mean exemplar pattern plus noise; every `bad_every`-th render is
    an unrelated image, which the CLIP filter must reject."""

    name = "fake"

    def __init__(self, bad_every: int = 3, delay_s: float = 0.0, size: int = 96):
        self.bad_every, self.delay_s, self.size = bad_every, delay_s, size

    def render(self, cluster, exemplars, prompts) -> list[Target]:
        if self.delay_s:
            time.sleep(self.delay_s)
        grids = []
        for i in exemplars:
            im = Image.open(io.BytesIO(cluster.members[i].record.image)).convert("RGB")
            grids.append((np.asarray(im.resize((GRID, GRID), Image.BOX), dtype=np.float32) - 128.0) / SCALE)
        mean = np.mean(grids, axis=0)
        out = []
        for j, p in enumerate(prompts):
            rng = np.random.default_rng(hash64(f"render:{cluster.cluster_id}:{j}"))
            if self.bad_every and j % self.bad_every == self.bad_every - 1:
                im = grid_image(rng.normal(size=(GRID, GRID, 3)), (self.size, self.size))
            else:
                im = grid_image(mean + 0.3 * rng.normal(size=(GRID, GRID, 3)), (self.size, self.size))
            out.append(Target(image=im, prompt=p.text, skill=p.skill, expert=self.name))
        return out


def fake_expert(bad_every: int = 3, delay_s: float = 0.0) -> FakeExpert:
    return FakeExpert(bad_every, delay_s)


# --- planted web corpus ------------------------------------------------------------------------------------------

SUBJECT_WORDS = ["zorb", "quix", "blent", "frap", "mivo", "tarn", "glim", "vesk", "dron", "plok", "snib", "wurt"]
CLASS_NOUNS = ["teapot", "backpack", "vase", "sneaker", "lamp", "robot", "bowl", "clock", "mug", "toy", "chair", "hat"]


def make_planted_records(n_subjects: int = 6, views: int = 6, n_junk: int = 3, n_small: int = 3,
                         boilerplate_pages: int | None = None) -> tuple[list[dict], dict]:
    """Rows {key, page_url, image_url, text, image(bytes)} of a small web corpus with known answers.

    - n_subjects coherent pages, `views` views each; page URLs spelled several ways (case, utm_, fragments,
      index.html, default port), which must group together; one off-topic image per page (an ad) that the
      coherence filter must drop; one re-encoded, resized copy of a view (near-duplicate inside the page);
      subject 0's views also appear as CMYK JPEG, 16-bit PNG and palette PNG, which must decode correctly;
      subject 1 is also sold on a second page sharing one photo (corpus-wide near-duplicate);
    - n_junk pages with unrelated images (incoherent), n_small pages with 2 images (too small);
    - a logo on every page (boilerplate) and a set of corrupt inputs (counted, never fatal).
    Returns (rows, expected) where expected names the surviving clusters' page keys.
    """
    rows: list[dict] = []
    expected = {"kept_pages": [], "dropped_pages": {}, "subjects": {}}
    logo = png_bytes(random_image("logo", (120, 80)).convert("P", palette=Image.ADAPTIVE, colors=16))

    def add(page: str, image: bytes, text: str, name: str):
        rows.append({"key": f"{len(rows):06d}", "page_url": page, "image_url": f"https://cdn.example.org/{name}",
                     "text": text, "image": image})

    for s in range(n_subjects):
        word, noun = SUBJECT_WORDS[s], CLASS_NOUNS[s]
        host = f"shop{s}.example.com"
        spellings = [f"https://{host}/item/{word}", f"HTTP://{host.upper()}:80/item/{word}/",
                     f"https://www.{host}/item/{word}?utm_source=news&utm_medium=mail",
                     f"https://{host}/item/{word}#reviews", f"https://{host}/item/./{word}/index.html",
                     f"https://{host}/item/{word}?fbclid=abc123"]
        key = f"https://{host}/item/{word}"
        expected["kept_pages"].append(key)
        expected["subjects"][key] = f"{word} {noun}"
        captions = [f"{word} {noun} on a table", f"the {word} {noun}, side view", f"{word} {noun} in its box",
                    f"close-up of the {word} {noun}", f"{word} {noun} held in a hand", f"my new {word} {noun}"]
        for v in range(views):
            im = subject_image(word, v, size=(96 + 8 * v, 96))
            if s == 0 and v == 1:
                data = jpeg_bytes(im.convert("CMYK"))
            elif s == 0 and v == 2:
                arr16 = (np.asarray(im.convert("L"), dtype=np.uint16) * 257)
                data = png_bytes(Image.fromarray(arr16).convert("I;16") if Image.fromarray(arr16).mode != "I;16" else Image.fromarray(arr16))
                im = im.convert("L").convert("RGB")
            elif s == 0 and v == 3:
                data = png_bytes(im.convert("P", palette=Image.ADAPTIVE, colors=64))
            elif s == 0 and v == 4:  # stored sideways with an EXIF orientation tag
                exif = Image.Exif()
                exif[0x0112] = 6
                data = jpeg_bytes(im.transpose(Image.ROTATE_90), exif=exif)
            else:
                data = jpeg_bytes(im)
            add(spellings[v % len(spellings)], data, captions[v % len(captions)], f"{word}/{v}.jpg")
        # near-duplicate inside the page: view 0 again, resized and re-encoded
        add(spellings[0], jpeg_bytes(subject_image(word, 0, size=(96, 96)).resize((90, 90)), quality=70),
            f"{word} {noun} thumbnail", f"{word}/0-small.jpg")
        add(spellings[1], jpeg_bytes(random_image(f"ad{s}")), "buy now great deal", f"ads/{s}.jpg")
        add(spellings[2], logo, "", "static/logo.png")
    # a second shop page for subject 1 that reuses one photo (corpus-wide near-duplicate)
    if n_subjects > 1:
        word, noun = SUBJECT_WORDS[1], CLASS_NOUNS[1]
        page = f"https://reseller.example.net/p/{word}-{noun}"
        expected["kept_pages"].append(page)
        expected["subjects"][page] = f"{word} {noun}"
        for v in range(views, views + 5):
            add(page, jpeg_bytes(subject_image(word, v)), f"{word} {noun} for sale", f"resell/{v}.jpg")
        add(page, jpeg_bytes(subject_image(word, 0), quality=80), f"{word} {noun} for sale", "resell/dup.jpg")
        add(page, logo, "", "static/logo.png")
    for j in range(n_junk):
        page = f"https://news.example.org/story/{j}"
        expected["dropped_pages"][page] = "incoherent"
        for v in range(6):
            add(page, jpeg_bytes(random_image(f"junk{j}-{v}")), f"news photo {v}", f"news/{j}/{v}.jpg")
        add(page, logo, "", "static/logo.png")
    for j in range(n_small):
        page = f"https://blog.example.org/post/{j}"
        expected["dropped_pages"][page] = "too_small"
        for v in range(2):
            add(page, jpeg_bytes(subject_image(f"small{j}", v)), f"small{j} thing", f"blog/{j}/{v}.jpg")
    bad = bad_inputs()
    for name, data in bad.items():
        add("https://bad.example.org/gallery", data, f"bad {name}", f"bad/{name}")
    expected["bad_inputs"] = sorted(bad)
    return rows, expected


@functools.lru_cache(maxsize=1)
def _bad_inputs() -> tuple:
    return tuple(_make_bad_inputs().items())


def bad_inputs() -> dict[str, bytes]:
    """Inputs that must be refused: name -> bytes; the reason is the name ("garbage" -> not_an_image)."""
    return dict(_bad_inputs())


def _make_bad_inputs() -> dict[str, bytes]:
    """Inputs that must be refused: name -> bytes; the reason is the name ("garbage" -> not_an_image)."""
    good = jpeg_bytes(random_image("bad-base", (200, 200)))
    damaged = bytearray(png_bytes(random_image("bad-png", (100, 100))))
    at = damaged.find(b"IDAT") + 20
    damaged[at:at + 8] = bytes(8)  # broken compressed pixel data: the PNG opens but cannot be decoded
    huge = png_bytes(Image.new("L", (6000, 6000), 0))  # 36 Mpx, a few kB: a decompression bomb under a 20 Mpx cap
    return {
        "empty": b"",
        "not_an_image": b"<html><body>404 not found</body></html>",
        "truncated": good[: len(good) // 2],
        "corrupt": bytes(damaged),
        "garbage": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "too_many_pixels": huge,
        "too_small": jpeg_bytes(random_image("tiny", (20, 20))),
        "bad_aspect": jpeg_bytes(random_image("wide", (400, 100))),
    }


def write_img2dataset_shards(rows: list[dict], folder: Path, n_shards: int = 3) -> list[Path]:
    """img2dataset webdataset layout: {key}.jpg, {key}.txt, {key}.json (url, caption, page_url, status)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, r in enumerate(rows):
                if i % n_shards != s:
                    continue
                key = f"{s:05d}{i:04d}"
                meta = {"url": r["image_url"], "caption": r["text"], "page_url": r["page_url"], "key": key,
                        "status": "success"}
                for ext, data in (("jpg", r["image"]), ("txt", r["text"].encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


# --- synthetic records for benchmarks -------------------------------------------------------------------------

def synthetic_records(unit: int, records: int = 10_000, page_size: int = 6, subjects: int = 500,
                      junk_every: int = 5, size: int = 64):
    """`records` RawRecords for unit `unit`: pages of `page_size` tiny JPEGs (every `junk_every`-th page junk).
    Each image is unique (a subject pattern plus per-record noise), so nothing is boilerplate by accident."""
    rng = np.random.default_rng(hash64(f"synthetic:{unit}"))
    patterns = [subject_pattern(SUBJECT_WORDS[i % len(SUBJECT_WORDS)] + str(i)) for i in range(subjects)]
    for i in range(records):
        page = i // page_size
        junk = page % junk_every == junk_every - 1
        s = (unit * 7919 + page) % subjects
        grid = rng.normal(size=(GRID, GRID, 3)) if junk else patterns[s] + 0.45 * rng.normal(size=(GRID, GRID, 3))
        px = np.clip(128 + SCALE * grid, 0, 255).astype(np.uint8)
        im = Image.fromarray(np.repeat(np.repeat(px, size // GRID, 0), size // GRID, 1), "RGB")
        yield RawRecord(key=f"{unit:05d}:{i:07d}", source=f"synthetic#{unit}",
                        page_url=f"https://site{unit}.example.com/page/{page}", image_url=f"https://img/{unit}/{i}.jpg",
                        text=f"item {s} photo {i % page_size}", image_bytes=jpeg_bytes(im, quality=85))
