"""Adding data to a PairsDatabase: webdataset shards, image folders, precomputed vectors.

Identity and keys:
- A shard is identified by its resolved path: re-adding it is a no-op (resume).
- A folder image is identified by its resolved file path, so re-adding a folder
  (or a folder nested in one already added) only embeds files not yet present.
- Record keys must be unique in the database. They are the webdataset key, or a
  folder image's path relative to the folder without its extension, behind an
  optional per-source `key_prefix`. Two img2dataset runs (both count from
  000000000) or two folders with the same file names need a prefix each to be
  merged; without one, every clashing sample is skipped with a reason that names
  the record already holding the key. Nothing is dropped silently.

Every part is written atomically (temporary file + rename) and recorded in
database.json before the next source starts.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from .atomic import atomic_path
from .errors import DimensionMismatchError
from .sources import (PairSample, ShardOpenError, ShardReader, expand_shards, folder_sample,
                      list_folder_images)
from .vectors import as_matrix

PARTS_DIR = "parts"
FOLDER_PART_SIZE = 10_000
# progress=None shows a bar from this many images (folders) or shard bytes on.
AUTO_PROGRESS_MIN_ITEMS = 1000
AUTO_PROGRESS_MIN_BYTES = 64 * 2 ** 20

SCHEMA = pa.schema([
    ("id", pa.int64()), ("key", pa.string()), ("caption", pa.string()), ("url", pa.string()),
    ("page_url", pa.string()), ("kind", pa.string()), ("path", pa.string()), ("member", pa.string()),
    ("offset", pa.int64()), ("size", pa.int64()), ("width", pa.int32()), ("height", pa.int32()),
    ("meta_json", pa.string()),
])
LOCATION_FIELDS = ("kind", "path", "member", "offset", "size")


@dataclass
class BuildReport:
    """What an add/build call did. Nothing is dropped without an entry here."""

    added: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"key", "source", "reason"}: samples not added
    warnings: list[dict] = field(default_factory=list)  # {"key", "source", "warning"}: added anyway
    already_present: int = 0  # folder images whose file is already in the database
    sources_done: int = 0
    sources_already_indexed: list[str] = field(default_factory=list)
    sources_skipped: list[dict] = field(default_factory=list)  # {"source", "reason"}: shards not readable

    def merge(self, other: "BuildReport") -> None:
        for name in ("added", "already_present", "sources_done"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("skipped", "warnings", "sources_already_indexed", "sources_skipped"):
            getattr(self, name).extend(getattr(other, name))

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [(f"added {self.added}, skipped {len(self.skipped)}, already present {self.already_present}, "
                  f"sources processed {self.sources_done}, already indexed {len(self.sources_already_indexed)}, "
                  f"sources skipped {len(self.sources_skipped)}")]
        lines += [f"  skipped source {s['source']}: {s['reason']}" for s in self.sources_skipped]
        lines += [f"  skipped {s['key']} ({s['source']}): {s['reason']}" for s in self.skipped]
        lines += [f"  warning {w['key']} ({w['source']}): {w['warning']}" for w in self.warnings]
        return "\n".join(lines)


def _check_prefix(key_prefix) -> str:
    if key_prefix is None:
        return ""
    if not isinstance(key_prefix, str):
        raise TypeError(f"key_prefix must be a string, got {type(key_prefix).__name__}")
    return key_prefix


def _bar(progress: bool | None, big: bool, **kwargs) -> tqdm:
    return tqdm(disable=not (big if progress is None else progress), **kwargs)


class IngestMixin:
    """The add_* methods of PairsDatabase (state, parts and index handling live there)."""

    def add_shards(self, shards, *, key_prefix: str | None = None, batch_size: int = 64,
                   progress: bool | None = None) -> BuildReport:
        """Embed and add webdataset shards (paths, globs, brace ranges or folders of tars).

        Shards already in the database are skipped (resume); one part per shard. A shard
        that cannot be opened is reported in `sources_skipped` and the others go on.
        `key_prefix` is put in front of every key of these shards (e.g. "run2/"), so
        several img2dataset runs can be merged. progress=None shows a bar from 64 MiB on.
        """
        prefix = _check_prefix(key_prefix)
        embedder = self._need_embedder()
        report = BuildReport()
        done = {p["source"].get("path"): p["source"] for p in self._state["parts"]
                if p["source"].get("kind") == "shard"}
        todo = []
        for shard in expand_shards(shards):
            size = shard.stat().st_size
            if str(shard) in done:
                if done[str(shard)].get("bytes") != size:
                    report.warnings.append({"key": "*", "source": str(shard),
                                            "warning": "shard changed size since it was indexed; not re-read"})
                report.sources_already_indexed.append(str(shard))
            else:
                todo.append((shard, size))
        total = sum(size for _, size in todo)
        with _bar(progress, total >= AUTO_PROGRESS_MIN_BYTES, total=total, unit="B", unit_scale=True,
                  desc=f"embedding {len(todo)} shard{'s' * (len(todo) != 1)}") as bar:
            for shard, size in todo:
                done_before = bar.n
                try:
                    reader = ShardReader(shard)
                except ShardOpenError as exc:
                    report.sources_skipped.append({"source": str(shard), "reason": exc.reason})
                    self._note_skipped_source(str(shard), exc.reason)
                    bar.update(size)
                    continue

                def tick(_sample, reader=reader, start=done_before):
                    bar.update(start + reader.position - bar.n)

                source = {"kind": "shard", "path": str(shard), "bytes": size, "key_prefix": prefix}
                part = self._ingest(reader, source, embedder, batch_size, prefix, folder_mode=False, tick=tick)
                bar.update(done_before + size - bar.n)
                report.merge(part)
                report.sources_done += 1
                self._note_skipped_source(str(shard), None)
                bar.set_postfix(added=report.added, skipped=len(report.skipped), refresh=False)
        self._sync_index(progress)
        return report

    def add_folder(self, root, *, key_prefix: str | None = None, batch_size: int = 64,
                   progress: bool | None = None, part_size: int = FOLDER_PART_SIZE) -> BuildReport:
        """Embed and add the images under `root` (captions from same-stem .txt files).

        Keys are `key_prefix` + the path relative to `root` without extension. Files
        already in the database (same resolved path) count as `already_present` and are
        not re-embedded, so re-adding a folder that gained files adds only the new ones.
        An image whose key is taken by another file is skipped with the reason.
        progress=None shows a bar from 1,000 new images on.
        """
        prefix = _check_prefix(key_prefix)
        embedder = self._need_embedder()
        root = Path(root).expanduser().resolve()
        files = list_folder_images(root)
        report = BuildReport()
        present = self._file_paths()
        fresh = [f for f in files if str(f) not in present]
        report.already_present = len(files) - len(fresh)
        with _bar(progress, len(fresh) >= AUTO_PROGRESS_MIN_ITEMS, total=len(fresh), unit="img",
                  desc=f"embedding {root.name or root}") as bar:
            for start in range(0, len(fresh), part_size):
                chunk = fresh[start:start + part_size]
                samples = (folder_sample(root, f) for f in chunk)
                source = {"kind": "folder", "path": str(root), "first": str(chunk[0]), "files": len(chunk),
                          "key_prefix": prefix}
                report.merge(self._ingest(samples, source, embedder, batch_size, prefix, folder_mode=True,
                                          tick=lambda _s: bar.update(1)))
                bar.set_postfix(added=report.added, skipped=len(report.skipped), refresh=False)
        report.sources_done += 1
        self._sync_index(progress)
        return report

    def add_embeddings(self, embeddings, records: Sequence[dict], *, source: str = "embeddings") -> np.ndarray:
        """Add precomputed embeddings with their records (each needs `key` and a location:
        `path` (+ `kind`, `member`, `offset`, `size` for tar members)). Returns the new ids."""
        vectors = as_matrix(embeddings, self.dim, "embeddings", normalize=True)
        if len(vectors) != len(records):
            raise DimensionMismatchError(f"{len(vectors)} embeddings but {len(records)} records")
        keys = self._key_index()
        seen: set[str] = set()
        samples = []
        for i, rec in enumerate(records):
            if "key" not in rec or "path" not in rec:
                raise ValueError(f"records[{i}] needs at least 'key' and 'path'")
            key = str(rec["key"])
            if key in keys or key in seen:
                raise ValueError(f"records[{i}] key {key!r} is already in the database"
                                 if key in keys else f"records[{i}] key {key!r} repeats an earlier record")
            location = {"kind": rec.get("kind", "file"), "path": str(rec["path"]), "member": rec.get("member"),
                        "offset": int(rec.get("offset", -1)), "size": int(rec.get("size", -1))}
            meta = {k: v for k, v in rec.items() if k not in ("key", "caption") + LOCATION_FIELDS}
            samples.append(PairSample(key, str(rec.get("caption", "")), meta, location))
            seen.add(key)
        start = len(self)
        self._write_part(samples, vectors, {"kind": "embeddings", "path": source}, [], [], embedder_sha256=None)
        self._sync_index(None)
        return np.arange(start, start + len(samples), dtype=np.int64)

    # ------------------------------------------------------------ internals
    def _clash_reason(self, key: str, prefix: str) -> str:
        other = self._key_index()[key]
        part, _ = self._locate(other)
        hint = "another key_prefix" if prefix else "key_prefix= (CLI: --key-prefix)"
        return (f"duplicate key: {key!r} is already in the database (record {other}, from "
                f"{part['source'].get('kind')} {part['source'].get('path')}); add this source with {hint} "
                "to keep both")

    def _ingest(self, samples: Iterable[PairSample], source: dict, embedder, batch_size: int, prefix: str,
                folder_mode: bool, tick=None) -> BuildReport:
        """Embed one source's samples into one new part."""
        report = BuildReport()
        keys = self._key_index()
        seen: set[str] = set()
        kept_samples: list[PairSample] = []
        vectors: list[np.ndarray] = []
        pending: list[PairSample] = []
        label = source["path"]

        def skip(key, reason):
            report.skipped.append({"key": key, "source": label, "reason": reason})

        def flush():
            if not pending:
                return
            emb, kept, bad = embedder.embed_images([s.image_source for s in pending], batch_size=batch_size,
                                                   progress=False, on_error="skip",
                                                   keys=[s.key for s in pending])
            for key, reason in bad:
                skip(key, reason)
            kept_samples.extend(pending[i] for i in kept)
            vectors.append(emb)
            pending.clear()

        for sample in samples:
            if tick is not None:
                tick(sample)
            sample.key = prefix + sample.key
            report.warnings.extend({"key": sample.key, "source": label, "warning": w} for w in sample.warnings)
            if sample.error is not None:
                skip(sample.key, sample.error)
            elif sample.key in keys:
                skip(sample.key, self._clash_reason(sample.key, prefix))
            elif sample.key in seen:
                skip(sample.key, "duplicate key within this source"
                     + (" (keys are relative paths without extension: a.jpg and a.png clash)" if folder_mode else ""))
            else:
                seen.add(sample.key)
                pending.append(sample)
                if len(pending) >= 4 * batch_size:
                    flush()
        flush()
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        self._write_part(kept_samples, matrix, source, report.skipped, report.warnings,
                         embedder_sha256=getattr(embedder, "fingerprint", None))
        report.added = len(kept_samples)
        return report

    def _write_part(self, samples: list[PairSample], vectors: np.ndarray, source: dict,
                    skipped: list[dict], warns: list[dict], embedder_sha256: str | None) -> None:
        name = f"part-{len(self._state['parts']):06d}"
        start = len(self)
        parts_dir = self.folder / PARTS_DIR
        parts_dir.mkdir(parents=True, exist_ok=True)
        table = _rows_table(samples, start)
        with atomic_path(parts_dir / f"{name}.npy", suffix=".npy") as tmp:
            np.save(tmp, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
        with atomic_path(parts_dir / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp)
        self._state["parts"].append({
            "name": name, "source": source, "start": start, "count": len(samples),
            "embedder_sha256": embedder_sha256,
            "skipped": [{"key": s["key"], "reason": s["reason"]} for s in skipped],
            "warnings": [{"key": w["key"], "warning": w["warning"]} for w in warns],
        })
        self._state["count"] = start + len(samples)
        self._write_state()  # the part now exists for resume and reopen
        if self._table is not None:
            self._table = pa.concat_tables([self._table, table])
        if self._key_to_id is not None:
            self._key_to_id.update({s.key: start + i for i, s in enumerate(samples)})

    def _file_paths(self) -> set[str]:
        """Resolved paths of the image files (not tar members) already in the database."""
        table = self._metadata()
        kinds = table.column("kind").to_pylist()
        return {p for k, p in zip(kinds, table.column("path").to_pylist()) if k == "file"}

    def _note_skipped_source(self, path: str, reason: str | None) -> None:
        """Keep database.json's list of unreadable sources current (a later success clears it)."""
        entries = [s for s in self._state.get("skipped_sources", []) if s["source"] != path]
        if reason is not None:
            entries.append({"source": path, "reason": reason})
        if entries != self._state.get("skipped_sources", []):
            self._state["skipped_sources"] = entries
            self._write_state()


def _rows_table(samples: list[PairSample], start: int) -> pa.Table:
    def size_of(sample: PairSample):
        try:
            source = io.BytesIO(sample.image_bytes) if sample.image_bytes is not None else sample.location["path"]
            with Image.open(source) as im:  # header only: no pixel decode
                return im.size
        except Exception:
            return (None, None)

    def text(value):
        return None if value is None else str(value)

    sizes = [size_of(s) for s in samples]
    columns = {
        "id": np.arange(start, start + len(samples), dtype=np.int64),
        "key": [s.key for s in samples],
        "caption": [s.caption for s in samples],
        "url": [text(s.meta.get("url")) for s in samples],
        "page_url": [text(s.meta.get("page_url")) for s in samples],
        "kind": [s.location["kind"] for s in samples],
        "path": [s.location["path"] for s in samples],
        "member": [s.location.get("member") for s in samples],
        "offset": [int(s.location.get("offset", -1)) for s in samples],
        "size": [int(s.location.get("size", -1)) for s in samples],
        "width": [w for w, _ in sizes],
        "height": [h for _, h in sizes],
        "meta_json": [json.dumps(s.meta, ensure_ascii=False, default=str) for s in samples],
    }
    return pa.table(columns, schema=SCHEMA)
