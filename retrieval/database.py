"""A database of (image, caption) pairs: CLIP embeddings + metadata + a FAISS index.

Folder layout (everything a reopen needs; nothing is re-embedded):

    db/
      database.json            format, dimension, embedder spec, settings, parts, index info
      parts/part-000000.npy    (n, dim) float32 L2-normalised embeddings (np.save, no pickle)
      parts/part-000000.parquet  one row per embedding: key, caption, url, page_url, location...
      index.faiss (+ .json)    retrieval.Index over all embeddings; ids = row numbers

One part per webdataset shard (or per `part_size` images of a folder). Each part
is written atomically and recorded in database.json, so an interrupted build
resumes at the next shard, and an index that lags the parts (crash before the
index was saved) is caught up on open. Unreadable images are skipped and listed
with their key and reason in the part record and in the BuildReport.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from .errors import (CorruptDatabaseError, CorruptIndexError, DimensionMismatchError, EmptyIndexError,
                     ImageReadError)
from .images import open_image
from .index import Index
from .index_plan import parse_bytes, plan_index
from .sources import (PairSample, expand_shards, folder_sample, iter_webdataset_shard, list_folder_images,
                      read_location)
from .vectors import as_matrix

DB_FILE = "database.json"
INDEX_FILE = "index.faiss"
PARTS_DIR = "parts"
FORMAT = "retrieval.PairsDatabase"
FORMAT_VERSION = 1
FOLDER_PART_SIZE = 10_000
REBUILD_GROWTH = 2.0  # re-plan the index once the database has doubled since the last build

SCHEMA = pa.schema([
    ("id", pa.int64()), ("key", pa.string()), ("caption", pa.string()), ("url", pa.string()),
    ("page_url", pa.string()), ("kind", pa.string()), ("path", pa.string()), ("member", pa.string()),
    ("offset", pa.int64()), ("size", pa.int64()), ("width", pa.int32()), ("height", pa.int32()),
    ("meta_json", pa.string()),
])
LOCATION_FIELDS = ("kind", "path", "member", "offset", "size")


@dataclass
class BuildReport:
    """What an add/build call did. `skipped` lists every sample not added, with its reason."""

    added: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"key", "source", "reason"}
    warnings: list[dict] = field(default_factory=list)  # {"key", "source", "warning"}: added anyway
    already_present: int = 0  # folder images whose key was already in the database
    sources_done: int = 0
    sources_already_indexed: list[str] = field(default_factory=list)

    def merge(self, other: "BuildReport") -> None:
        self.added += other.added
        self.skipped += other.skipped
        self.warnings += other.warnings
        self.already_present += other.already_present
        self.sources_done += other.sources_done
        self.sources_already_indexed += other.sources_already_indexed

    def summary(self) -> str:
        lines = [f"added {self.added}, skipped {len(self.skipped)}, already present {self.already_present}, "
                 f"sources processed {self.sources_done}, already indexed {len(self.sources_already_indexed)}"]
        lines += [f"  skipped {s['key']} ({s['source']}): {s['reason']}" for s in self.skipped]
        lines += [f"  warning {w['key']} ({w['source']}): {w['warning']}" for w in self.warnings]
        return "\n".join(lines)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class PairsDatabase:
    """Embeddings + metadata + index for (image, caption) pairs, searchable by text, image or vector."""

    def __init__(self, folder: Path, state: dict, embedder=None, index: Index | None = None):
        self.folder = Path(folder)
        self._state = state
        self._embedder = embedder
        self.index = index
        self._table: pa.Table | None = None
        self._key_to_id: dict[str, int] | None = None

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, folder: str | os.PathLike, embedder, *, memory_budget=None, target_recall: float = 0.95,
               k: int = 10, dim: int | None = None, exist_ok: bool = False) -> "PairsDatabase":
        """A new, empty database folder. With exist_ok=True an existing one is opened instead."""
        folder = Path(folder)
        if (folder / DB_FILE).is_file():
            if not exist_ok:
                raise FileExistsError(f"a database already exists at {folder}")
            return cls.open(folder, embedder)
        if embedder is None and dim is None:
            raise ValueError("give an embedder (or dim= for a vectors-only database)")
        dim = int(embedder.dim if embedder is not None else dim)
        if embedder is not None and dim != embedder.dim:
            raise DimensionMismatchError(f"dim={dim} but the embedder produces {embedder.dim}-d vectors")
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not empty (and holds no {DB_FILE})")
        (folder / PARTS_DIR).mkdir(parents=True, exist_ok=True)
        state = {
            "format": FORMAT, "version": FORMAT_VERSION, "dim": dim,
            "embedder": getattr(embedder, "spec", None) if embedder is not None else None,
            "embedder_name": getattr(embedder, "name", None) if embedder is not None else None,
            "settings": {"memory_budget": parse_bytes(memory_budget) if memory_budget is not None else None,
                         "target_recall": target_recall, "k": k},
            "count": 0, "parts": [], "index": None,
        }
        db = cls(folder, state, embedder)
        db._write_state()
        return db

    @classmethod
    def open(cls, folder: str | os.PathLike, embedder=None, *, mmap: bool = True,
             repair: bool = False) -> "PairsDatabase":
        """Reopen a saved database. The embedder (needed for text/image queries) is loaded
        from the stored spec when not given. repair=True rebuilds a corrupt/missing index."""
        folder = Path(folder)
        path = folder / DB_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no database at {folder} ({DB_FILE} missing)")
        try:
            state = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptDatabaseError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CorruptDatabaseError(f"{path} is not a {FORMAT} file")
        if state.get("version", 0) > FORMAT_VERSION:
            raise CorruptDatabaseError(f"{path} has format version {state['version']}; this code reads "
                                       f"up to {FORMAT_VERSION}")
        if embedder is not None and getattr(embedder, "dim", state["dim"]) != state["dim"]:
            raise DimensionMismatchError(f"database {folder} holds {state['dim']}-d embeddings but the "
                                         f"embedder produces {embedder.dim}-d vectors")
        db = cls(folder, state, embedder)
        db._check_parts()
        db._open_index(mmap=mmap, repair=repair)
        return db

    @classmethod
    def build(cls, folder: str | os.PathLike, embedder, *, shards=None, image_folder=None,
              memory_budget=None, target_recall: float = 0.95, batch_size: int = 64,
              progress: bool | None = None) -> tuple["PairsDatabase", BuildReport]:
        """Create (or resume) a database at `folder` and add `shards` and/or `image_folder`."""
        if shards is None and image_folder is None:
            raise ValueError("give shards= and/or image_folder=")
        db = cls.create(folder, embedder, memory_budget=memory_budget, target_recall=target_recall, exist_ok=True)
        report = BuildReport()
        if shards is not None:
            report.merge(db.add_shards(shards, batch_size=batch_size, progress=progress))
        if image_folder is not None:
            report.merge(db.add_folder(image_folder, batch_size=batch_size, progress=progress))
        return db, report

    # ----------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self._state["count"])

    @property
    def dim(self) -> int:
        return int(self._state["dim"])

    @property
    def skipped(self) -> list[dict]:
        """Every sample ever skipped while building, with key, source and reason."""
        return [dict(s, source=p["source"].get("path")) for p in self._state["parts"] for s in p["skipped"]]

    @property
    def embedder(self):
        """The embedder; loaded from the stored spec on first use when not given to open()."""
        if self._embedder is None:
            spec = self._state.get("embedder")
            if not spec:
                raise RuntimeError(f"database {self.folder} has no reloadable embedder spec (it was built with "
                                   "a config-only model); pass embedder= to PairsDatabase.open")
            from .embedder import Embedder

            self._embedder = Embedder.from_pretrained(spec["name"], spec.get("pretrained"))
            if self._embedder.dim != self.dim:
                raise DimensionMismatchError(f"embedder {spec} produces {self._embedder.dim}-d vectors, "
                                             f"database {self.folder} holds {self.dim}-d")
        return self._embedder

    @property
    def embeddings(self) -> np.ndarray:
        """All embeddings as one (N, dim) float32 array (a copy assembled from the parts)."""
        arrays = [self._part_vectors(p) for p in self._state["parts"] if p["count"]]
        return np.concatenate(arrays) if arrays else np.zeros((0, self.dim), np.float32)

    def embedding(self, ids) -> np.ndarray:
        """Embeddings of the given ids, (len(ids), dim)."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        out = np.empty((len(ids), self.dim), np.float32)
        for j, i in enumerate(ids):
            part, row = self._locate(int(i))
            out[j] = self._part_vectors(part)[row]
        return out

    # --------------------------------------------------------------- adding
    def add_shards(self, shards, *, batch_size: int = 64, progress: bool | None = None) -> BuildReport:
        """Embed and add webdataset shards (paths, globs, brace ranges or folders of tars).

        Shards already in the database are skipped (resume); one part per shard.
        """
        embedder = self._need_embedder()
        report = BuildReport()
        done = {p["source"].get("path"): p["source"] for p in self._state["parts"]
                if p["source"].get("kind") == "shard"}
        for shard in expand_shards(shards):
            size = shard.stat().st_size
            if str(shard) in done:
                if done[str(shard)].get("bytes") != size:
                    report.warnings.append({"key": "*", "source": str(shard),
                                            "warning": "shard changed size since it was indexed; not re-read"})
                report.sources_already_indexed.append(str(shard))
                continue
            part_report = self._ingest(iter_webdataset_shard(shard), {"kind": "shard", "path": str(shard),
                                                                       "bytes": size},
                                       embedder, batch_size, progress, folder_mode=False)
            report.merge(part_report)
            report.sources_done += 1
        self._sync_index(progress)
        return report

    def add_folder(self, root, *, batch_size: int = 64, progress: bool | None = None,
                   part_size: int = FOLDER_PART_SIZE) -> BuildReport:
        """Embed and add the images under `root` (captions from same-stem .txt files).

        Images whose key (relative path without extension) is already present are
        counted in `already_present` and not re-embedded, so re-adding a folder that
        gained files adds only the new ones.
        """
        embedder = self._need_embedder()
        root = Path(root).expanduser().resolve()
        files = list_folder_images(root)
        report = BuildReport()
        keys = self._keys()
        fresh = [f for f in files if f.relative_to(root).with_suffix("").as_posix() not in keys]
        report.already_present = len(files) - len(fresh)
        for start in range(0, len(fresh), part_size):
            chunk = fresh[start:start + part_size]
            samples = (folder_sample(root, f) for f in chunk)
            part_report = self._ingest(samples, {"kind": "folder", "path": str(root),
                                                 "first": str(chunk[0]), "files": len(chunk)},
                                       embedder, batch_size, progress, folder_mode=True)
            report.merge(part_report)
        report.sources_done += 1
        self._sync_index(progress)
        return report

    def add_embeddings(self, embeddings, records: Sequence[dict], *, source: str = "embeddings") -> np.ndarray:
        """Add precomputed embeddings with their records (each needs `key` and a location:
        `path` (+ `kind`, `member`, `offset`, `size` for tar members)). Returns the new ids."""
        vectors = as_matrix(embeddings, self.dim, "embeddings", normalize=True)
        if len(vectors) != len(records):
            raise DimensionMismatchError(f"{len(vectors)} embeddings but {len(records)} records")
        keys = self._keys()
        samples = []
        for i, rec in enumerate(records):
            if "key" not in rec or "path" not in rec:
                raise ValueError(f"records[{i}] needs at least 'key' and 'path'")
            if rec["key"] in keys:
                raise ValueError(f"records[{i}] key {rec['key']!r} is already in the database")
            location = {"kind": rec.get("kind", "file"), "path": str(rec["path"]), "member": rec.get("member"),
                        "offset": int(rec.get("offset", -1)), "size": int(rec.get("size", -1))}
            meta = {k: v for k, v in rec.items() if k not in ("key", "caption") + LOCATION_FIELDS}
            samples.append(PairSample(str(rec["key"]), str(rec.get("caption", "")), meta, location))
            keys.add(rec["key"])
        start = len(self)
        self._write_part(samples, vectors, {"kind": "embeddings", "path": source}, [], [])
        self._sync_index(None)
        return np.arange(start, start + len(samples), dtype=np.int64)

    # -------------------------------------------------------------- search
    def search(self, query, k: int = 10) -> list[dict]:
        """Search by a text (str), an image (PIL image or image path) or a vector (ndarray)."""
        if isinstance(query, str) and not Path(query).is_file():
            return self.search_text(query, k)
        if isinstance(query, (str, os.PathLike, Image.Image, bytes)):
            return self.search_image(query, k)
        return self.search_vector(query, k)

    def search_text(self, text: str, k: int = 10) -> list[dict]:
        """Records whose images best match a text, best first (each with a `score`)."""
        self._check_not_empty()
        return self.search_vectors(self.embedder.embed_texts([text], progress=False), k)[0]

    def search_image(self, image, k: int = 10) -> list[dict]:
        """Records whose images best match an image (PIL, path or bytes), best first."""
        self._check_not_empty()
        return self.search_vectors(self.embedder.embed_images([image], progress=False), k)[0]

    def search_vector(self, vector, k: int = 10) -> list[dict]:
        """Records nearest to one embedding vector (normalised here), best first."""
        vector = np.asarray(vector)
        if vector.ndim == 2 and len(vector) != 1:
            raise DimensionMismatchError(f"search_vector takes one vector, got {len(vector)}; use search_vectors")
        return self.search_vectors(vector.reshape(1, -1) if vector.ndim == 1 else vector, k)[0]

    def search_vectors(self, vectors, k: int = 10) -> list[list[dict]]:
        """One result list per query vector."""
        self._check_not_empty()
        queries = as_matrix(vectors, self.dim, "query vectors", normalize=True)
        scores, ids = self.index.search(queries, min(k, len(self)))
        out = []
        for row_scores, row_ids in zip(scores, ids):
            valid = row_ids >= 0
            records = self.records(row_ids[valid])
            for rec, score in zip(records, row_scores[valid]):
                rec["score"] = float(score)
            out.append(records)
        return out

    def near_duplicates(self, threshold: float = 0.95, batch: int = 4096) -> list[tuple[int, int, float]]:
        """All pairs (id_a < id_b, score) whose cosine similarity exceeds `threshold`."""
        self._check_not_empty()
        pairs = []
        for part in self._state["parts"]:
            if not part["count"]:
                continue
            vectors = self._part_vectors(part)
            for start in range(0, len(vectors), batch):
                hits = self.index.range_search(vectors[start:start + batch], threshold)
                for offset, (ids, scores) in enumerate(hits):
                    me = part["start"] + start + offset
                    pairs += [(me, int(i), float(s)) for i, s in zip(ids, scores) if i > me]
        return sorted(pairs)

    # ------------------------------------------------------------- records
    def records(self, ids) -> list[dict]:
        """Records (dicts) for ids, in order: id, key, caption, url, page_url, location, size, meta."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            bad = ids[(ids < 0) | (ids >= len(self))][0]
            raise IndexError(f"id {bad} is out of range for database {self.folder} of {len(self)} records")
        rows = self._metadata().take(pa.array(ids)).to_pylist()
        for row in rows:
            meta_json = row.pop("meta_json")
            row["meta"] = json.loads(meta_json) if meta_json else {}
        return rows

    def get(self, id_: int) -> dict:
        return self.records([id_])[0]

    def find(self, key: str) -> dict | None:
        """The record with this key, or None."""
        index = self._key_index().get(key)
        return None if index is None else self.get(index)

    def load_image(self, record) -> Image.Image:
        """The exemplar image of a record (dict or id) as RGB, read from its file or tar member."""
        if not isinstance(record, dict):
            record = self.get(int(record))
        missing = [f for f in LOCATION_FIELDS if f not in record]
        if missing:
            raise ValueError(f"record {record.get('key')!r} lacks location fields {missing}")
        label = record["path"] if record["kind"] == "file" else f"{record['path']}:{record['member']}"
        try:
            data = read_location(record)
        except (OSError, ValueError, KeyError) as exc:
            raise ImageReadError(label, str(exc)) from exc
        return open_image(data, name=label)

    # ---------------------------------------------------------- index care
    def rebuild_index(self, *, memory_budget=None, target_recall: float | None = None,
                      progress: bool | None = None) -> Index:
        """Re-plan, rebuild and re-tune the index over all embeddings, then save it."""
        if memory_budget is not None:
            self._state["settings"]["memory_budget"] = parse_bytes(memory_budget)
        if target_recall is not None:
            self._state["settings"]["target_recall"] = target_recall
        self.index = None
        self._sync_index(progress, force_rebuild=True)
        return self.index

    # ------------------------------------------------------------ internals
    def _need_embedder(self):
        embedder = self.embedder
        if embedder.dim != self.dim:
            raise DimensionMismatchError(f"embedder produces {embedder.dim}-d vectors, database holds {self.dim}-d")
        return embedder

    def _check_not_empty(self) -> None:
        if len(self) == 0 or self.index is None or self.index.ntotal == 0:
            raise EmptyIndexError(f"database {self.folder} is empty; add shards, a folder or embeddings first")

    def _keys(self) -> set:
        return set(self._key_index())

    def _key_index(self) -> dict[str, int]:
        if self._key_to_id is None:
            keys = self._metadata().column("key").to_pylist()
            self._key_to_id = {k: i for i, k in enumerate(keys)}
        return self._key_to_id

    def _metadata(self) -> pa.Table:
        if self._table is None:
            tables = [pq.read_table(self.folder / PARTS_DIR / f"{p['name']}.parquet", schema=SCHEMA)
                      for p in self._state["parts"]]
            self._table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        return self._table

    def _part_vectors(self, part: dict) -> np.ndarray:
        return np.load(self.folder / PARTS_DIR / f"{part['name']}.npy", mmap_mode="r", allow_pickle=False)

    def _locate(self, id_: int) -> tuple[dict, int]:
        if not 0 <= id_ < len(self):
            raise IndexError(f"id {id_} is out of range for database {self.folder} of {len(self)} records")
        for part in self._state["parts"]:
            if part["start"] <= id_ < part["start"] + part["count"]:
                return part, id_ - part["start"]
        raise CorruptDatabaseError(f"no part holds id {id_} in {self.folder}")

    def _ingest(self, samples: Iterator[PairSample], source: dict, embedder, batch_size: int,
                progress: bool | None, folder_mode: bool) -> BuildReport:
        """Embed one source's samples into one new part (or several for large folders)."""
        report = BuildReport()
        keys = self._keys()
        seen: set[str] = set()
        kept_samples: list[PairSample] = []
        vectors: list[np.ndarray] = []
        pending: list[PairSample] = []
        label = source["path"]

        def flush():
            if not pending:
                return
            emb, kept, bad = embedder.embed_images([s.image_source for s in pending], batch_size=batch_size,
                                                   progress=False, on_error="skip",
                                                   keys=[s.key for s in pending])
            report.skipped.extend({"key": key, "source": label, "reason": reason} for key, reason in bad)
            kept_samples.extend(pending[i] for i in kept)
            vectors.append(emb)
            pending.clear()

        bar = tqdm(desc=f"embedding {Path(label).name}", unit="img",
                   disable=not progress if progress is not None else True)
        for sample in samples:
            bar.update(1)
            report.warnings.extend({"key": sample.key, "source": label, "warning": w} for w in sample.warnings)
            if sample.error is not None:
                report.skipped.append({"key": sample.key, "source": label, "reason": sample.error})
                continue
            if sample.key in keys:
                if folder_mode:
                    report.already_present += 1
                else:
                    report.skipped.append({"key": sample.key, "source": label,
                                           "reason": "duplicate key: already in the database"})
                continue
            if sample.key in seen:
                report.skipped.append({"key": sample.key, "source": label,
                                       "reason": "duplicate key within this source"})
                continue
            seen.add(sample.key)
            pending.append(sample)
            if len(pending) >= 4 * batch_size:
                flush()
        flush()
        bar.close()
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        self._write_part(kept_samples, matrix, source, report.skipped, report.warnings)
        report.added = len(kept_samples)
        return report

    def _write_part(self, samples: list[PairSample], vectors: np.ndarray, source: dict,
                    skipped: list[dict], warns: list[dict]) -> None:
        name = f"part-{len(self._state['parts']):06d}"
        start = len(self)
        parts_dir = self.folder / PARTS_DIR
        parts_dir.mkdir(parents=True, exist_ok=True)
        table = self._rows_table(samples, start)
        npy_tmp, pq_tmp = parts_dir / f".{name}.npy.tmp", parts_dir / f".{name}.parquet.tmp"
        with open(npy_tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
        pq.write_table(table, pq_tmp)
        os.replace(npy_tmp, parts_dir / f"{name}.npy")
        os.replace(pq_tmp, parts_dir / f"{name}.parquet")
        self._state["parts"].append({
            "name": name, "source": source, "start": start, "count": len(samples),
            "skipped": [{"key": s["key"], "reason": s["reason"]} for s in skipped],
            "warnings": [{"key": w["key"], "warning": w["warning"]} for w in warns],
        })
        self._state["count"] = start + len(samples)
        self._write_state()  # the part now exists for resume and reopen
        if self._table is not None:
            self._table = pa.concat_tables([self._table, table])
        if self._key_to_id is not None:
            self._key_to_id.update({s.key: start + i for i, s in enumerate(samples)})

    @staticmethod
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

    def _write_state(self) -> None:
        _atomic_write_text(self.folder / DB_FILE, json.dumps(self._state, indent=1))

    def _check_parts(self) -> None:
        expected = 0
        for part in self._state["parts"]:
            if part["start"] != expected:
                raise CorruptDatabaseError(f"{self.folder}: part {part['name']} starts at id {part['start']}, "
                                           f"expected {expected}")
            for ext in ("npy", "parquet"):
                if not (self.folder / PARTS_DIR / f"{part['name']}.{ext}").is_file():
                    raise CorruptDatabaseError(f"{self.folder}: {PARTS_DIR}/{part['name']}.{ext} is missing")
            try:
                shape = self._part_vectors(part).shape
            except (ValueError, OSError) as exc:
                raise CorruptDatabaseError(f"{self.folder}: {part['name']}.npy is unreadable: {exc}") from exc
            if shape != (part["count"], self.dim):
                raise CorruptDatabaseError(f"{self.folder}: {part['name']}.npy has shape {shape}, database.json "
                                           f"records ({part['count']}, {self.dim})")
            expected += part["count"]
        if expected != self._state["count"]:
            raise CorruptDatabaseError(f"{self.folder}: parts hold {expected} rows, database.json says "
                                       f"{self._state['count']}")

    def _open_index(self, mmap: bool, repair: bool) -> None:
        path = self.folder / INDEX_FILE
        if self._state.get("index") is None or not path.is_file():
            if len(self):
                if self._state.get("index") is not None and not repair:
                    raise CorruptIndexError(f"index file {path} is missing; reopen with repair=True to rebuild it")
                self._sync_index(None, force_rebuild=True)
            return
        try:
            self.index = Index.load(path, mmap=mmap)
        except CorruptIndexError as exc:
            if not repair:
                raise CorruptIndexError(f"{exc}. Reopen with PairsDatabase.open(..., repair=True) to rebuild "
                                        "the index from the stored embeddings") from exc
            self._sync_index(None, force_rebuild=True)
            return
        if self.index.dim != self.dim:
            raise CorruptIndexError(f"index {path} is {self.index.dim}-d, database {self.folder} is {self.dim}-d")
        if self.index.ntotal != len(self):
            self._sync_index(None)  # an interrupted build: catch the index up (or rebuild it)

    def _sync_index(self, progress: bool | None, force_rebuild: bool = False) -> None:
        """Bring the index in line with the parts: add new rows, or re-plan and rebuild."""
        n = len(self)
        settings = self._state["settings"]
        index_info = self._state.get("index") or {}
        if n == 0:
            return
        rebuild = force_rebuild or self.index is None or self.index.ntotal > n
        if not rebuild and self.index.ntotal < n:
            built_at = max(1, int(index_info.get("built_at_count", self.index.ntotal)))
            planned = plan_index(n, self.dim, settings.get("memory_budget")).key
            rebuild = planned != self.index.key and n >= REBUILD_GROWTH * built_at
        if rebuild:
            self.index = Index.build(self.embeddings, np.arange(n, dtype=np.int64),
                                     memory_budget=settings.get("memory_budget"),
                                     target_recall=settings.get("target_recall"), k=settings.get("k", 10),
                                     progress=progress)
            built_at = n
        elif self.index.ntotal < n:
            start = self.index.ntotal
            for part in self._state["parts"]:
                lo, hi = part["start"], part["start"] + part["count"]
                if hi <= start or not part["count"]:
                    continue
                rows = self._part_vectors(part)[max(0, start - lo):]
                self.index.add(rows, np.arange(max(start, lo), hi, dtype=np.int64), progress=progress)
            built_at = index_info.get("built_at_count", n)
        else:
            built_at = index_info.get("built_at_count", n)
        self.index.save(self.folder / INDEX_FILE)
        self._state["index"] = {"file": INDEX_FILE, "key": self.index.key, "ntotal": self.index.ntotal,
                                "built_at_count": built_at, "search_params": self.index.search_params}
        self._write_state()

    def __repr__(self) -> str:
        key = self.index.key if self.index is not None else None
        return f"PairsDatabase({str(self.folder)!r}, records={len(self)}, dim={self.dim}, index={key!r})"
