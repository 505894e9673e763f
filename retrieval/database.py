"""A database of (image, caption) pairs: CLIP embeddings + metadata + a FAISS index.

Folder layout (everything a reopen needs; nothing is re-embedded):

    db/
      database.json            format, dimension, embedder spec + weights SHA-256, settings, parts, index info
      parts/part-000000.npy    (n, dim) float32 L2-normalised embeddings (np.save, no pickle)
      parts/part-000000.parquet  one row per embedding: key, caption, url, page_url, location...
      index.faiss (+ .json)    retrieval.Index over all embeddings; ids = row numbers

One part per webdataset shard (or per `part_size` images of a folder); see
ingest.py for how sources are added and keyed, upkeep.py for index upkeep.

Embeddings from two different models are not comparable, so the database stores
the embedder's spec and a SHA-256 of its weights and refuses an embedder whose
weights differ (EmbedderMismatchError naming both), unless
allow_different_embedder=True.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .atomic import atomic_write_text
from .errors import (CorruptDatabaseError, DimensionMismatchError, EmbedderMismatchError, EmptyIndexError,
                     ImageReadError)
from .images import open_image
from .index import Index
from .index_plan import parse_bytes
from .ingest import FOLDER_PART_SIZE, LOCATION_FIELDS, PARTS_DIR, SCHEMA, BuildReport, IngestMixin
from .sources import read_location
from .upkeep import INDEX_FILE, IndexUpkeepMixin
from .vectors import as_matrix

__all__ = ["PairsDatabase", "BuildReport", "DB_FILE", "INDEX_FILE", "PARTS_DIR", "FOLDER_PART_SIZE"]

DB_FILE = "database.json"
FORMAT = "retrieval.PairsDatabase"
FORMAT_VERSION = 1


def _stored_label(state: dict) -> str:
    spec = state.get("embedder")
    if spec and spec.get("pretrained"):
        return f"{spec['name']} (pretrained={spec['pretrained']})"
    return (spec or {}).get("name") or state.get("embedder_name") or "an unnamed model"


class PairsDatabase(IngestMixin, IndexUpkeepMixin):
    """Embeddings + metadata + index for (image, caption) pairs, searchable by text, image or vector."""

    def __init__(self, folder: Path, state: dict, embedder=None, index: Index | None = None,
                 allow_different_embedder: bool = False):
        self.folder = Path(folder)
        self._state = state
        self._embedder = embedder
        self._allow_different_embedder = allow_different_embedder
        self.index = index
        self._table: pa.Table | None = None
        self._key_to_id: dict[str, int] | None = None

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, folder: str | os.PathLike, embedder, *, memory_budget=None, target_recall: float | None = 0.95,
               target_latency_ms: float | None = None, k: int = 10, dim: int | None = None,
               exist_ok: bool = False, allow_different_embedder: bool = False) -> "PairsDatabase":
        """A new, empty database folder. With exist_ok=True an existing one is opened instead.

        The index is tuned for `target_recall` (recall@k against exact search) and/or
        `target_latency_ms` (mean time per query); with both, the recall choice unless it
        is slower than the latency target (see Index.tune).
        """
        folder = Path(folder)
        if (folder / DB_FILE).is_file():
            if not exist_ok:
                raise FileExistsError(f"a database already exists at {folder}")
            return cls.open(folder, embedder, allow_different_embedder=allow_different_embedder)
        if embedder is None and dim is None:
            raise ValueError("give an embedder (or dim= for a vectors-only database)")
        if embedder is not None and dim is not None and int(dim) != embedder.dim:
            raise DimensionMismatchError(f"dim={dim} but the embedder produces {embedder.dim}-d vectors")
        _check_targets(target_recall, target_latency_ms)
        dim = int(embedder.dim if embedder is not None else dim)
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not empty (and holds no {DB_FILE})")
        (folder / PARTS_DIR).mkdir(parents=True, exist_ok=True)
        state = {
            "format": FORMAT, "version": FORMAT_VERSION, "dim": dim,
            "embedder": None, "embedder_name": None, "embedder_sha256": None,
            "settings": {"memory_budget": parse_bytes(memory_budget) if memory_budget is not None else None,
                         "target_recall": target_recall, "target_latency_ms": target_latency_ms, "k": k},
            "count": 0, "parts": [], "index": None, "skipped_sources": [],
        }
        if embedder is not None:
            state.update(_identity(embedder))
        db = cls(folder, state, embedder, allow_different_embedder=allow_different_embedder)
        db._write_state()
        return db

    @classmethod
    def open(cls, folder: str | os.PathLike, embedder=None, *, mmap: bool = True, repair: bool = False,
             allow_different_embedder: bool = False) -> "PairsDatabase":
        """Reopen a saved database. The embedder (needed for text/image queries) is loaded
        from the stored spec when not given. repair=True rebuilds a corrupt/missing index.

        An embedder whose weights differ from the ones the database was built with raises
        EmbedderMismatchError; allow_different_embedder=True turns that into a warning.
        """
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
        db = cls(folder, state, None, allow_different_embedder=allow_different_embedder)
        if embedder is not None:
            db._check_embedder(embedder)
            db._embedder = embedder
        db._check_parts()
        db._open_index(mmap=mmap, repair=repair)
        return db

    @classmethod
    def build(cls, folder: str | os.PathLike, embedder, *, shards=None, image_folder=None, key_prefix=None,
              memory_budget=None, target_recall: float | None = 0.95, target_latency_ms: float | None = None,
              batch_size: int = 64, progress: bool | None = None,
              allow_different_embedder: bool = False) -> tuple["PairsDatabase", BuildReport]:
        """Create (or resume) a database at `folder` and add `shards` and/or `image_folder`.

        `key_prefix` goes in front of the keys of the sources added by this call.
        progress=None shows bars for large inputs (see add_shards / add_folder).
        """
        if shards is None and image_folder is None:
            raise ValueError("give shards= and/or image_folder=")
        db = cls.create(folder, embedder, memory_budget=memory_budget, target_recall=target_recall,
                        target_latency_ms=target_latency_ms, exist_ok=True,
                        allow_different_embedder=allow_different_embedder)
        report = BuildReport()
        if shards is not None:
            report.merge(db.add_shards(shards, key_prefix=key_prefix, batch_size=batch_size, progress=progress))
        if image_folder is not None:
            report.merge(db.add_folder(image_folder, key_prefix=key_prefix, batch_size=batch_size,
                                       progress=progress))
        return db, report

    def _check_embedder(self, embedder) -> None:
        """Refuse an embedder other than the one the stored embeddings came from."""
        stored = _stored_label(self._state)
        if getattr(embedder, "dim", self.dim) != self.dim:
            raise DimensionMismatchError(
                f"database {self.folder} holds {self.dim}-d embeddings from {stored}, but the embedder "
                f"{getattr(embedder, 'label', embedder)} produces {embedder.dim}-d vectors")
        stored_sha = self._state.get("embedder_sha256")
        sha = getattr(embedder, "fingerprint", None)
        if sha is None:
            return  # a duck-typed embedder without weights to compare
        if stored_sha is None:
            if len(self) and self._state.get("embedder_name"):  # built before fingerprints were stored
                warnings.warn(f"database {self.folder} does not record its model's weights; cannot check that "
                              f"{embedder.label} is the model it was built with ({stored})", stacklevel=3)
            return
        if sha != stored_sha:
            message = (f"database {self.folder} was built with {stored} (weights sha256 {stored_sha[:16]}), but "
                       f"the embedder given is {embedder.label} (weights sha256 {sha[:16]}); embeddings of "
                       "different models are not comparable. Use the model the database was built with, or "
                       "pass allow_different_embedder=True (CLI: --allow-different-model) if you know the two "
                       "produce the same embeddings")
            if not self._allow_different_embedder:
                raise EmbedderMismatchError(message)
            warnings.warn(message, stacklevel=3)

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

            embedder = Embedder.from_pretrained(spec["name"], spec.get("pretrained"))
            self._check_embedder(embedder)  # e.g. a local-dir: folder whose weights were replaced
            self._embedder = embedder
        return self._embedder

    @property
    def skipped_sources(self) -> list[dict]:
        """Sources (shards) that could not be opened at their last attempt, with the reason."""
        return list(self._state.get("skipped_sources", []))

    @property
    def embeddings(self) -> np.ndarray:
        """All embeddings as one (N, dim) float32 array (a copy assembled from the parts)."""
        arrays = [self._part_vectors(p) for p in self._state["parts"] if p["count"]]
        return np.concatenate(arrays) if arrays else np.zeros((0, self.dim), np.float32)

    def embedding(self, ids) -> np.ndarray:
        """Embeddings of the given ids, (len(ids), dim)."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            bad = ids[(ids < 0) | (ids >= len(self))][0]
            raise IndexError(f"id {bad} is out of range for database {self.folder} of {len(self)} records")
        return self._gather(ids)

    # -------------------------------------------------------------- search
    def search(self, query, k: int = 10) -> list[dict]:
        """Search by a text (str), an image (PIL image or image path) or a vector (ndarray)."""
        if isinstance(query, str) and not Path(query).is_file():
            return self.search_text(query, k)
        if isinstance(query, (str, os.PathLike, Image.Image, bytes)):
            return self.search_image(query, k)
        return self.search_vector(query, k)

    def search_text(self, text: str, k: int = 10) -> list[dict]:
        """Records whose images best match a text, best first (each with a `score`). An empty or blank text
        raises ValueError: it embeds to the model's "no text" vector and would return arbitrary records."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"query text must be a non-empty string, got {text!r}")
        _check_k(k)
        self._check_not_empty()
        return self.search_vectors(self.embedder.embed_texts([text], progress=False), k)[0]

    def search_image(self, image, k: int = 10) -> list[dict]:
        """Records whose images best match an image (PIL, path or bytes), best first."""
        _check_k(k)
        self._check_not_empty()
        return self.search_vectors(self.embedder.embed_images([image], progress=False), k)[0]

    def search_vector(self, vector, k: int = 10) -> list[dict]:
        """Records nearest to one embedding vector (normalised here), best first."""
        vector = np.asarray(vector)
        if vector.ndim == 2 and len(vector) != 1:
            raise DimensionMismatchError(f"search_vector takes one vector, got {len(vector)}; use search_vectors")
        return self.search_vectors(vector.reshape(1, -1) if vector.ndim == 1 else vector, k)[0]

    def search_vectors(self, vectors, k: int = 10) -> list[list[dict]]:
        """One result list per query vector (at most `k` each, fewer when the database is smaller)."""
        _check_k(k)
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

    # ------------------------------------------------------------ internals
    def _need_embedder(self):
        embedder = self.embedder
        if self._state.get("embedder_sha256") is None and getattr(embedder, "fingerprint", None):
            # A vectors-only (or older) database gains images: record the model from now on.
            self._check_embedder(embedder)
            self._state.update(_identity(embedder))
            self._write_state()
        return embedder

    def _check_not_empty(self) -> None:
        if len(self) == 0 or self.index is None or self.index.ntotal == 0:
            raise EmptyIndexError(f"database {self.folder} is empty; add shards, a folder or embeddings first")

    def _key_index(self) -> dict[str, int]:
        if self._key_to_id is None:
            keys = self._metadata().column("key").to_pylist()
            self._key_to_id = {k: i for i, k in enumerate(keys)}
        return self._key_to_id

    def _metadata(self) -> pa.Table:
        if self._table is None:
            tables = [self._read_part_table(p) for p in self._state["parts"]]
            self._table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        return self._table

    def _read_part_table(self, part: dict) -> pa.Table:
        path = self.folder / PARTS_DIR / f"{part['name']}.parquet"
        try:
            return pq.read_table(path, schema=SCHEMA)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise CorruptDatabaseError(f"{path} is unreadable (damaged parquet: {exc}); the part must be "
                                       "re-ingested") from exc

    def _part_vectors(self, part: dict) -> np.ndarray:
        return np.load(self.folder / PARTS_DIR / f"{part['name']}.npy", mmap_mode="r", allow_pickle=False)

    def _locate(self, id_: int) -> tuple[dict, int]:
        if not 0 <= id_ < len(self):
            raise IndexError(f"id {id_} is out of range for database {self.folder} of {len(self)} records")
        for part in self._state["parts"]:
            if part["start"] <= id_ < part["start"] + part["count"]:
                return part, id_ - part["start"]
        raise CorruptDatabaseError(f"no part holds id {id_} in {self.folder}")

    def _write_state(self) -> None:
        atomic_write_text(self.folder / DB_FILE, json.dumps(self._state, indent=1))

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
            table_path = self.folder / PARTS_DIR / f"{part['name']}.parquet"
            try:
                rows = pq.ParquetFile(table_path).metadata.num_rows  # the footer only: cheap
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise CorruptDatabaseError(f"{table_path} is unreadable (truncated or damaged parquet: {exc}); "
                                           "the part must be re-ingested") from exc
            if rows != part["count"]:
                raise CorruptDatabaseError(f"{table_path} has {rows} rows, database.json records {part['count']}")
            expected += part["count"]
        if expected != self._state["count"]:
            raise CorruptDatabaseError(f"{self.folder}: parts hold {expected} rows, database.json says "
                                       f"{self._state['count']}")

    def __repr__(self) -> str:
        key = self.index.key if self.index is not None else None
        return f"PairsDatabase({str(self.folder)!r}, records={len(self)}, dim={self.dim}, index={key!r})"


def _check_k(k) -> None:
    """k must be a whole number >= 1: 2.5 or "3" is a caller's mistake, not something to round silently."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")


def _identity(embedder) -> dict:
    """What database.json records about the model: reload spec, name, weights SHA-256."""
    return {"embedder": getattr(embedder, "spec", None), "embedder_name": getattr(embedder, "label", None),
            "embedder_sha256": getattr(embedder, "fingerprint", None)}


def _check_targets(target_recall, target_latency_ms) -> None:
    if target_recall is not None and not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    if target_latency_ms is not None and not target_latency_ms > 0:
        raise ValueError(f"target_latency_ms must be > 0, got {target_latency_ms}")
