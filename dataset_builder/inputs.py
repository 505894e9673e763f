"""Input adapters: img2dataset webdataset shards, parquet/jsonl manifests, WIT TSV, and factory sources.

Each input file is one *unit*: the unit of resumption in the ingest phase. Readers yield RawRecord and never
decode images; a row they cannot use is still yielded (with the field missing) so the decode stage counts it.
A file that breaks off (truncated gzip, corrupt parquet row group, torn tar) is not fatal: what was read is
kept, the rest is counted as read.errors.<kind>_unreadable and listed with the file name in stats.json's
read_errors (a parquet file resumes at its next row group).
"""
from __future__ import annotations

import base64
import binascii
import csv
import glob
import gzip
import importlib
import json
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .counts import Counts
from .records import RawRecord

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
WIT_TEXT_COLUMNS = ("caption_reference_description", "caption_alt_text_description")


class InputError(ValueError):
    """An input spec or file the builder cannot read at all (the message names it)."""


@dataclass
class InputUnit:
    index: int
    kind: str
    path: str
    spec: dict = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return f"{self.index:05d}"

    def describe(self) -> dict:
        return {"index": self.index, "kind": self.kind, "path": self.path}


def load_factory(spec: str) -> Callable:
    """Import "package.module:attribute"."""
    if not isinstance(spec, str) or ":" not in spec:
        raise InputError(f"factory must look like 'package.module:function', got {spec!r}")
    mod, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise InputError(f"cannot import factory {spec!r}: {e}") from e
    return obj


def _expand_paths(spec: dict) -> list[str]:
    raw = spec.get("paths", spec.get("path"))
    if raw is None:
        raise InputError(f"input spec {spec} needs 'path' or 'paths'")
    items = raw if isinstance(raw, list) else [raw]
    out: list[str] = []
    for item in items:
        try:
            from braceexpand import braceexpand
            expanded = list(braceexpand(str(item)))
        except ImportError:
            expanded = [str(item)]
        for e in expanded:
            matches = sorted(glob.glob(e)) if any(c in e for c in "*?[") else [e]
            if not matches:
                raise InputError(f"input pattern matched no files: {e}")
            for m in matches:
                if not Path(m).is_file():
                    raise InputError(f"input file not found: {m}")
                out.append(m)
    return out


def expand_inputs(inputs: list[dict]) -> list[InputUnit]:
    """One unit per input file, in config order; the order fixes unit ids, so reruns see the same units."""
    units: list[InputUnit] = []
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict) or "type" not in spec:
            raise InputError(f"inputs[{i}] must be a mapping with a 'type', got {spec!r}")
        kind = spec["type"]
        if kind == "factory":
            load_factory(spec.get("factory"))
            for u in range(int(spec.get("units", 1))):
                units.append(InputUnit(len(units), kind, f"{spec['factory']}#{u}", dict(spec, unit=u)))
            continue
        if kind not in READERS:
            raise InputError(f"inputs[{i}]: unknown type {kind!r}; known: {sorted(READERS) + ['factory']}")
        if kind == "wit" and spec.get("quoting", "minimal") not in WIT_QUOTING:
            raise InputError(f"inputs[{i}].quoting must be one of {sorted(WIT_QUOTING)}, got {spec['quoting']!r}")
        for path in _expand_paths(spec):
            units.append(InputUnit(len(units), kind, path, dict(spec)))
    return units


def read_unit(unit: InputUnit, counts: Counts, errors: list | None = None) -> Iterator[RawRecord]:
    """errors: receives {"file", "unit", "reason", "error"} for each read error (also counted in `counts`)."""
    if unit.kind == "factory":
        fn = load_factory(unit.spec["factory"])
        yield from fn(unit.spec["unit"], **unit.spec.get("kwargs", {}))
        return
    yield from READERS[unit.kind](unit, counts, errors if errors is not None else [])


def read_error(unit: InputUnit, counts: Counts, errors: list, reason: str, exc: BaseException,
               where: str = "") -> None:
    """Counts a file that could not be read (to the end): read.errors.<reason>, a line on stderr naming the file,
    and an entry in `errors` (stats.json read_errors)."""
    msg = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    counts.add(f"read.errors.{reason}")
    errors.append({"file": unit.path, "unit": unit.index, "reason": reason,
                   "error": f"{where}: {msg}" if where else msg})
    print(f"[dataset_builder] {unit.kind} input {unit.path}{where and ' ' + where}: {reason}: {msg} "
          "(records read before the error are kept)", file=sys.stderr)


# What reading a text input can raise when the file breaks off or holds bad bytes (not a bug of ours).
TEXT_READ_ERRORS = (EOFError, OSError, zlib.error, UnicodeDecodeError, csv.Error)


def _guarded(lines: Iterator, on_error) -> Iterator:
    """Yields from `lines` until it raises a read error (EOF inside gzip, bad bytes, I/O), then calls on_error.
    Only the reading is guarded, never the caller's processing of what it yields."""
    while True:
        try:
            item = next(lines)
        except StopIteration:
            return
        except TEXT_READ_ERRORS as e:
            on_error(e)
            return
        yield item


# --- img2dataset webdataset shards ------------------------------------------------------------------------

def read_webdataset(unit: InputUnit, counts: Counts, errors: list) -> Iterator[RawRecord]:
    """Members `{key}.jpg|png|...`, `{key}.txt`, `{key}.json` (img2dataset: url, caption, page_url)."""
    current_key, parts = None, {}
    try:
        with tarfile.open(unit.path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base or base.startswith("."):
                    continue
                key, ext = base.split(".", 1)
                key = member.name[: len(member.name) - len(base)] + key
                if key != current_key and current_key is not None:
                    yield _webdataset_record(unit, current_key, parts, counts)
                    parts = {}
                current_key = key
                f = tar.extractfile(member)
                parts[ext.lower()] = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        read_error(unit, counts, errors, "tar_unreadable", e)
    if current_key is not None:
        yield _webdataset_record(unit, current_key, parts, counts)


def _webdataset_record(unit: InputUnit, key: str, parts: dict, counts: Counts) -> RawRecord:
    meta: dict = {}
    if "json" in parts:
        try:
            meta = json.loads(parts["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            counts.add("read.errors.bad_json")
    image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
    text = parts["txt"].decode("utf-8", errors="replace") if "txt" in parts else (meta.get("caption") or "")
    return RawRecord(key=f"{unit.uid}:{key}", source=unit.path, page_url=meta.get("page_url"),
                     image_url=meta.get("url"), text=text or "", image_bytes=image)


# --- parquet / jsonl manifests -----------------------------------------------------------------------------

def _manifest_record(unit: InputUnit, row: dict, n: int) -> RawRecord:
    s = unit.spec
    image_bytes = row.get(s.get("image_bytes_col", "image_bytes"))
    image_path = row.get(s.get("image_path_col", "image_path"))
    if isinstance(image_bytes, dict):  # Hugging Face datasets Image feature: {"bytes": ..., "path": ...}
        image_path = image_path or image_bytes.get("path")
        image_bytes = image_bytes.get("bytes")
    if isinstance(image_bytes, str):  # bytes in JSON are base64 text
        try:
            image_bytes = base64.b64decode(image_bytes, validate=True)
        except (binascii.Error, ValueError):
            image_bytes = b""
    if image_path and not image_bytes:
        p = Path(str(image_path))
        if not p.is_absolute():
            p = Path(s.get("image_root") or Path(unit.path).parent) / p
        image_path = str(p)
    key_col = s.get("key_col")
    key = str(row.get(key_col)) if key_col and row.get(key_col) is not None else f"{n:09d}"
    text = row.get(s.get("text_col", "text"))
    return RawRecord(key=f"{unit.uid}:{key}", source=unit.path, page_url=row.get(s.get("page_url_col", "page_url")),
                     image_url=row.get(s.get("image_url_col", "image_url")) or image_path,
                     text="" if text is None else str(text), image_bytes=image_bytes or None,
                     image_path=None if image_bytes else image_path)


def read_parquet(unit: InputUnit, counts: Counts, errors: list) -> Iterator[RawRecord]:
    """Row group by row group: a corrupt row group is counted (with its unread rows) and the next one is read.
    Row numbers come from the footer, so keys do not shift when a row group is lost."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    bad = (OSError, EOFError, ValueError, pa.ArrowException)
    try:
        pf = pq.ParquetFile(unit.path)
    except bad as e:  # no readable footer (cut short, not parquet): nothing of the file can be read
        read_error(unit, counts, errors, "parquet_unreadable", e)
        return
    first = 0
    for g in range(pf.metadata.num_row_groups):
        n_rows, done = pf.metadata.row_group(g).num_rows, 0
        batches = pf.iter_batches(batch_size=512, row_groups=[g])
        while True:
            try:
                rows = next(batches).to_pylist()
            except StopIteration:
                break
            except bad as e:
                read_error(unit, counts, errors, "parquet_unreadable", e, where=f"row group {g}")
                counts.add("read.errors.parquet_rows_unread", n_rows - done)
                break
            for row in rows:
                yield _manifest_record(unit, row, first + done)
                done += 1
        first += n_rows


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8", newline="") if path.endswith(".gz") else \
        open(path, "rt", encoding="utf-8", newline="")


def read_jsonl(unit: InputUnit, counts: Counts, errors: list) -> Iterator[RawRecord]:
    with _open_text(unit.path) as f:
        lines = _guarded(iter(f), lambda e: read_error(unit, counts, errors, "jsonl_unreadable", e))
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                counts.add("read.errors.bad_json_line")
                continue
            yield _manifest_record(unit, row if isinstance(row, dict) else {}, n)


# --- WIT TSV -------------------------------------------------------------------------------------------------

WIT_QUOTING = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}


def read_wit(unit: InputUnit, counts: Counts, errors: list) -> Iterator[RawRecord]:
    """WIT columns (page_url, image_url, caption_reference_description, caption_alt_text_description, ...).

    WIT ships URLs only, so images come from a local path column (`image_path_col`, default "image_path") or a
    base64 bytes column (`image_b64_col`, default "b64_bytes", as in the WIT image-pixel release).
    The text is the first non-empty of `text_cols` (default: reference description, then alt text).
    `quoting`: "minimal" (default: standard CSV quoting, as WIT's TSVs are written and as the Hugging Face and
    TFDS WIT loaders read them: a quoted field may hold tabs, newlines and "" for a quote) or "none" (every
    character is literal; for TSVs written without quoting).
    """
    s = unit.spec
    text_cols = s.get("text_cols", list(WIT_TEXT_COLUMNS))
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with _open_text(unit.path) as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=WIT_QUOTING[s.get("quoting", "minimal")])
        try:
            fieldnames = reader.fieldnames
        except TEXT_READ_ERRORS as e:
            read_error(unit, counts, errors, "wit_unreadable", e)
            return
        if not fieldnames or "page_url" not in fieldnames:
            raise InputError(f"WIT TSV {unit.path} has no 'page_url' column (header: {fieldnames})")
        rows = _guarded(reader, lambda e: read_error(unit, counts, errors, "wit_unreadable", e,
                                                     where=f"after row {reader.line_num}"))
        for n, row in enumerate(rows):
            text = next((row[c] for c in text_cols if row.get(c)), "")
            b64 = row.get(s.get("image_b64_col", "b64_bytes"))
            image_bytes = None
            if b64:
                try:
                    image_bytes = base64.b64decode(b64, validate=False)
                except (binascii.Error, ValueError):
                    image_bytes = b""
            path = row.get(s.get("image_path_col", "image_path"))
            if path and not image_bytes:
                p = Path(path)
                path = str(p if p.is_absolute() else Path(s.get("image_root") or Path(unit.path).parent) / p)
            yield RawRecord(key=f"{unit.uid}:{n:09d}", source=unit.path, page_url=row.get("page_url"),
                            image_url=row.get("image_url"), text=text, image_bytes=image_bytes or None,
                            image_path=None if image_bytes else (path or None))


READERS = {"webdataset": read_webdataset, "parquet": read_parquet, "jsonl": read_jsonl, "wit": read_wit}
