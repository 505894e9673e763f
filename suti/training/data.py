"""Training data: webdataset shards and image folders -> deterministic, resumable batches.

Sources (``expand_sources``):
- webdataset tar shards in img2dataset's layout (``{key}.jpg|png|webp``, ``{key}.txt``, ``{key}.json``)
  or in the in-context layout of docs/interfaces.md (``{key}.target.jpg``, ``{key}.ex{i}.jpg`` ...),
  given as paths, globs (``data/*.tar``) or brace patterns (``data/{000000..000099}.tar``);
- a folder of images with same-stem ``.txt`` captions, or with a ``captions.jsonl``
  (``{"file": "a.jpg", "caption": "..."}`` per line).

Order. Each rank reads an infinite stream: epoch 0, epoch 1, ... Within an epoch the shard order is
permuted with ``(seed, epoch)``, shards are dealt to ranks (or, with fewer shards than ranks, records
are dealt round-robin), folder indices are fully permuted, and a seeded shuffle buffer mixes records.
Everything is a pure function of (seed, epoch, rank, world size), so a position ``(epoch, index)``
(raw records consumed in that epoch, bad ones included) identifies exactly where to resume.

Batching happens here, not in the DataLoader: a batch is the next ``batch_size`` *raw* records, decoded,
with unreadable ones dropped (so a batch can be smaller, and is never silently refilled). DataLoader
workers take every W-th batch and skip the others' records without decoding them, so the batch
sequence is identical for any number of workers. Every batch carries its end position and the
(key, reason) of each record it skipped.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from retrieval.shards import TAR_SUFFIXES, expand_pattern, iter_tar_samples

from ..images import ImageLoadError, load_image_tensor

log = logging.getLogger("suti.training")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
TASKS = ("text_to_image", "in_context")
_EXEMPLAR_MEMBER = re.compile(r"ex(\d+)\.[a-z0-9]+")
SHARD_EXTS = TAR_SUFFIXES


class DataError(ValueError):
    """A data source that cannot be used at all (missing, empty, wrong layout); names the source."""


class SampleError(ValueError):
    """One record that cannot be decoded; the trainer skips and counts it."""


# ----------------------------------------------------------------------------- records
@dataclass
class Record:
    """One raw (undecoded) sample: ``members`` maps a webdataset extension (``jpg``, ``txt``,
    ``ex0.jpg``, ...) to bytes (from a shard), a Path (image in a folder) or a str (caption)."""

    key: str
    origin: str
    members: dict


def iter_tar_records(path: str, skips: list | None = None) -> Iterator[Record]:
    """Records of one tar shard in file order (read by retrieval.shards). Every problem the reader reports (a
    torn or corrupt shard, a duplicate key, a directory or hidden member ...) is appended to ``skips`` as
    (``path:key`` or ``path:<reason>``, ``"reason (detail)"``): the stream never loses records silently."""
    def report(problem):
        if skips is not None:
            # "reason (detail)": SkipStats groups by the words before " (", so each reason is one category
            skips.append((f"{path}:{problem.key if problem.key else '<' + problem.reason + '>'}",
                          f"{problem.reason} ({problem.detail})"))

    for sample in iter_tar_samples(path, report):
        yield Record(sample.key, path, sample.members)


# ----------------------------------------------------------------------------- sources
class ShardSource:
    """A list of webdataset tar shards."""

    def __init__(self, shards: list[str]):
        if not shards:
            raise DataError("ShardSource needs at least one shard")
        self.shards = list(shards)

    def __repr__(self):
        return f"ShardSource({len(self.shards)} shards, first {self.shards[0]})"

    def records(self, epoch: int, seed: int, rank: int, world: int, shuffle: bool, skips: list) -> Iterator[Record]:
        order = list(self.shards)
        if shuffle:
            perm = np.random.default_rng([seed, epoch, 0]).permutation(len(order))
            order = [order[i] for i in perm]
        if len(order) >= world:
            # Whole shards per rank: each rank reads only its own files.
            for path in order[rank::world]:
                yield from iter_tar_records(path, skips)
        else:
            # Fewer shards than ranks: every rank reads all shards and keeps every world-th record.
            i = 0
            for path in order:
                for rec in iter_tar_records(path, skips if rank == 0 else None):
                    if i % world == rank:
                        yield rec
                    i += 1


class FolderSource:
    """Images in a folder (recursively) with same-stem .txt captions or a captions.jsonl."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.items: list[tuple[str, Path, str]] = []  # (key, image path, caption)
        self.index_skips: list[tuple[str, str]] = []
        self._index()

    def __repr__(self):
        return f"FolderSource({self.folder}, {len(self.items)} images)"

    def _index(self):
        jsonl = self.folder / "captions.jsonl"
        if jsonl.is_file():
            for lineno, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                where = f"{jsonl}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    self.index_skips.append((where, f"invalid JSON ({e})"))
                    continue
                name = row.get("file") or row.get("file_name") or row.get("image")
                caption = row.get("caption", row.get("text"))
                if not isinstance(name, str) or not isinstance(caption, str):
                    self.index_skips.append((where, "needs string fields 'file' and 'caption'"))
                    continue
                path = self.folder / name
                if not path.is_file():
                    self.index_skips.append((where, f"image {path} does not exist"))
                    continue
                self.items.append((str(Path(name).with_suffix("")), path, caption))
        else:
            for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
                if path.suffix.lower().lstrip(".") not in IMAGE_EXTS or path.name.startswith("."):
                    continue
                rel = path.relative_to(self.folder).with_suffix("")
                txt = path.with_suffix(".txt")
                if not txt.is_file():
                    self.index_skips.append((str(path), "no caption file " + txt.name))
                    continue
                try:
                    caption = txt.read_text(encoding="utf-8")
                except UnicodeDecodeError as e:
                    self.index_skips.append((str(txt), f"caption is not UTF-8 ({e})"))
                    continue
                self.items.append((str(rel), path, caption))
        if not self.items:
            detail = f"; skipped: {self.index_skips[:3]}" if self.index_skips else ""
            raise DataError(f"image folder {self.folder} has no usable (image, caption) pairs "
                            f"(expected same-stem .txt files or a captions.jsonl){detail}")

    def records(self, epoch: int, seed: int, rank: int, world: int, shuffle: bool, skips: list) -> Iterator[Record]:
        order = np.random.default_rng([seed, epoch, 0]).permutation(len(self.items)) if shuffle \
            else range(len(self.items))
        for j, i in enumerate(order):
            if j % world == rank:
                key, path, caption = self.items[int(i)]
                yield Record(key, str(self.folder), {"image": path, "txt": caption})


def expand_sources(specs) -> list:
    """Paths/globs/brace patterns -> sources: one ShardSource with every shard (in the order given),
    then one FolderSource per image folder."""
    if isinstance(specs, (str, Path)):
        specs = [specs]
    if not specs:
        raise DataError("no data sources given")
    shards, folders = [], []
    for spec in specs:
        try:
            paths = expand_pattern(spec)
        except FileNotFoundError:
            paths = []
        if not paths:
            raise DataError(f"data source {spec!r} matches no files")
        for p in paths:
            path = Path(p)
            if path.is_dir():
                inner = sorted(str(x) for x in path.iterdir() if x.name.endswith(SHARD_EXTS))
                (shards.extend(inner) if inner else folders.append(str(path)))
            elif path.is_file() and path.name.endswith(SHARD_EXTS):
                shards.append(str(path))
            elif path.exists():
                raise DataError(f"data source {p!r} is neither a tar shard nor a folder")
            else:
                raise DataError(f"data source {p!r} (from {spec!r}) does not exist")
    return ([ShardSource(shards)] if shards else []) + [FolderSource(f) for f in folders]


# ----------------------------------------------------------------------------- decoding
def _text(value, what: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SampleError(f"{what} is not UTF-8 ({e})") from e
    value = value.strip()
    if not value:
        raise SampleError(f"{what} is empty")
    return value


def _image(members: dict, prefix: str, key: str, size: int, fit: str) -> torch.Tensor:
    """Decode the image member ``{prefix}{ext}`` (or ``image``) of a record."""
    for ext in IMAGE_EXTS:
        name = f"{prefix}{ext}"
        if name in members:
            break
    else:
        if not prefix and "image" in members:
            name = "image"
        else:
            raise SampleError(f"no image member (looked for {prefix}{{{','.join(IMAGE_EXTS)}}})")
    src = members[name]
    try:
        return load_image_tensor(src, size, fit, name=f"{key}.{name}" if isinstance(src, bytes) else None)
    except ImageLoadError as e:
        raise SampleError(str(e)) from e


def _caption_t2i(members: dict) -> str:
    if "txt" in members:
        return _text(members["txt"], "caption (.txt)")
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SampleError(f"no .txt caption and the .json is invalid ({e})") from e
        if isinstance(meta, dict) and isinstance(meta.get("caption"), str):
            return _text(meta["caption"], "caption (.json)")
    raise SampleError("no caption (.txt, or 'caption' in .json)")


def decode_text_to_image(rec: Record, size: int, fit: str, notes: list) -> dict:
    return {"image": _image(rec.members, "", rec.key, size, fit), "caption": _caption_t2i(rec.members),
            "key": rec.key}


def decode_in_context(rec: Record, size: int, fit: str, notes: list, max_exemplars: int = 5) -> dict:
    """Target + exemplars. An unreadable exemplar is dropped (and noted); the record needs >= 1 left."""
    m = rec.members
    if "target.txt" not in m:
        raise SampleError("no target.txt (in-context layout expected: key.target.jpg/.txt, key.ex{i}.jpg/.txt)")
    out = {"image": _image(m, "target.", rec.key, size, fit), "caption": _text(m["target.txt"], "target.txt"),
           "key": rec.key}
    indices = sorted({int(x.group(1)) for x in (_EXEMPLAR_MEMBER.fullmatch(k) for k in m) if x})
    images, captions = [], []
    for i in indices:
        if len(images) >= max_exemplars:
            break
        try:
            caption = _text(m[f"ex{i}.txt"], f"ex{i}.txt") if f"ex{i}.txt" in m else None
            if caption is None:
                raise SampleError(f"ex{i} has no caption (ex{i}.txt)")
            images.append(_image(m, f"ex{i}.", rec.key, size, fit))
            captions.append(caption)
        except SampleError as e:
            notes.append((f"{rec.origin}:{rec.key}.ex{i}", f"exemplar dropped: {e}"))
    if not images:
        raise SampleError("no readable exemplar (ex0.jpg + ex0.txt ...)")
    out["exemplar_images"] = torch.stack(images)
    out["exemplar_captions"] = captions
    return out


def collate(items: list[dict], task: str) -> dict:
    batch = {"keys": [it["key"] for it in items], "captions": [it["caption"] for it in items]}
    batch["images"] = torch.stack([it["image"] for it in items]) if items else torch.zeros(0)
    if task == "in_context" and items:
        k = max(it["exemplar_images"].shape[0] for it in items)
        b, (c, h, w) = len(items), items[0]["image"].shape
        ex = torch.zeros(b, k, c, h, w)
        mask = torch.zeros(b, k, dtype=torch.bool)
        caps = []
        for i, it in enumerate(items):
            n = it["exemplar_images"].shape[0]
            ex[i, :n] = it["exemplar_images"]
            mask[i, :n] = True
            caps.append(list(it["exemplar_captions"]) + [""] * (k - n))
        batch.update(exemplar_images=ex, exemplar_mask=mask, exemplar_captions=caps)
    return batch


# ----------------------------------------------------------------------------- position and stats
@dataclass
class DataPosition:
    """Where a rank's stream stands: ``index`` raw records of ``epoch`` consumed (bad ones included)."""

    epoch: int = 0
    index: int = 0
    samples: int = 0  # good samples delivered so far (for logging)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "samples": self.samples}

    @classmethod
    def from_dict(cls, d: dict) -> "DataPosition":
        return cls(int(d.get("epoch", 0)), int(d.get("index", 0)), int(d.get("samples", 0)))


@dataclass
class SkipStats:
    """Counts of skipped records by reason, with the most recent examples (key, reason)."""

    total: int = 0
    by_reason: Counter = field(default_factory=Counter)
    recent: list = field(default_factory=list)
    keep: int = 100
    log_first: int = 50

    @staticmethod
    def category(reason: str) -> str:
        # Group by the reason's leading words (file names vary, the kind of failure does not).
        r = reason.split(": ", 1)[-1] if reason.startswith(("/", ".")) else reason
        return r.split(" (")[0][:80]

    def add(self, key: str, reason: str) -> None:
        self.total += 1
        self.by_reason[self.category(reason)] += 1
        self.recent = (self.recent + [[key, reason]])[-self.keep:]
        if self.total <= self.log_first:
            log.warning("skipped %s: %s", key, reason)
        elif self.total == self.log_first + 1:
            log.warning("more skipped records: further ones are counted in the metrics log, not logged one by one")

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.by_reason), "recent": self.recent}

    @classmethod
    def from_dict(cls, d: dict) -> "SkipStats":
        return cls(total=int(d.get("total", 0)), by_reason=Counter(d.get("by_reason", {})),
                   recent=[list(x) for x in d.get("recent", [])])


# ----------------------------------------------------------------------------- the stream
def _shuffled(records: Iterator[Record], buffer: int, rng: np.random.Generator) -> Iterator[Record]:
    """Seeded shuffle buffer (raw records; decoding happens after)."""
    if buffer <= 1:
        yield from records
        return
    buf: list[Record] = []
    for rec in records:
        if len(buf) < buffer:
            buf.append(rec)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], rec = rec, buf[i]
        yield rec
    while buf:
        i = int(rng.integers(len(buf)))
        buf[i], buf[-1] = buf[-1], buf[i]
        yield buf.pop()


class BatchStream(IterableDataset):
    """An infinite, deterministic stream of decoded batches for one rank, starting at ``start``.

    Each yielded batch is a dict: ``images`` (B,3,H,W) in [-1,1], ``captions``, ``keys``, ``position``
    (DataPosition dict after this batch), ``skipped`` [(key, reason)], and for ``in_context``
    ``exemplar_images`` (B,K,3,H,W), ``exemplar_captions`` [[str]*K], ``exemplar_mask`` (B,K).
    """

    def __init__(self, sources, task: str, image_size: int, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 1000, rank: int = 0, world: int = 1,
                 start: DataPosition | None = None, fit: str = "center-crop", max_exemplars: int = 5):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world size {world}")
        self.sources = expand_sources(sources) if not isinstance(sources, list) or \
            not all(isinstance(s, (ShardSource, FolderSource)) for s in sources) else sources
        self.task, self.image_size, self.batch_size = task, image_size, batch_size
        self.seed, self.shuffle, self.shuffle_buffer = seed, shuffle, shuffle_buffer if shuffle else 0
        self.rank, self.world = rank, world
        self.start = start or DataPosition()
        self.fit, self.max_exemplars = fit, max_exemplars

    @property
    def index_skips(self) -> list:
        """Records rejected while indexing folders (e.g. an image without a caption file)."""
        return [s for src in self.sources for s in getattr(src, "index_skips", [])]

    def epoch_records(self, epoch: int, skips: list) -> Iterator[Record]:
        def chain():
            for src in self.sources:
                yield from src.records(epoch, self.seed, self.rank, self.world, self.shuffle, skips)

        return _shuffled(chain(), self.shuffle_buffer, np.random.default_rng([self.seed, epoch, 1, self.rank]))

    def decode(self, rec: Record, notes: list) -> dict:
        if self.task == "in_context":
            return decode_in_context(rec, self.image_size, self.fit, notes, self.max_exemplars)
        return decode_text_to_image(rec, self.image_size, self.fit, notes)

    def _raw_batches(self) -> Iterator[tuple[list[Record], list, DataPosition]]:
        """Groups of ``batch_size`` raw records with the position after each group (no decoding)."""
        epoch, skip = self.start.epoch, self.start.index
        group, skips = [], []
        while True:
            n = 0
            for n, rec in enumerate(self.epoch_records(epoch, skips), 1):
                if n <= skip:
                    skips.clear()  # reported before the checkpoint that we resume from
                    continue
                group.append(rec)
                if len(group) == self.batch_size:
                    yield group, list(skips), DataPosition(epoch, n)
                    group = []
                    skips.clear()  # the same list object keeps collecting shard-level skips
            if n == 0:
                raise DataError(f"rank {self.rank} of {self.world} got no records in epoch {epoch} from "
                                f"{self.sources} (skipped: {skips[:3]})")
            if n < skip:
                raise DataError(f"resume position (epoch {epoch}, index {skip}) is past the end of the epoch "
                                f"({n} records): the data changed since the checkpoint")
            epoch, skip = epoch + 1, 0

    def __iter__(self):
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        for j, (group, skips, pos) in enumerate(self._raw_batches()):
            if j % nworkers != wid:
                continue  # another worker decodes this batch
            items, notes = [], list(skips)
            for rec in group:
                try:
                    items.append(self.decode(rec, notes))
                except SampleError as e:
                    notes.append((f"{rec.origin}:{rec.key}", str(e)))
            batch = collate(items, self.task)
            batch["position"] = {"epoch": pos.epoch, "index": pos.index}
            batch["skipped"] = notes
            yield batch


def _passthrough(x):
    return x


def make_loader(stream: BatchStream, num_workers: int = 0, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader over a BatchStream (batches are already built; workers keep the order).

    It gets a private generator: starting an iterator then never draws from the global torch RNG, so the
    training run's random state does not depend on when loaders were (re)created."""
    kw = dict(prefetch_factor=prefetch_factor, persistent_workers=False) if num_workers > 0 else {}
    return DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_passthrough,
                      generator=torch.Generator(), **kw)
