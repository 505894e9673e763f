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
import gzip
import importlib
import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from retrieval.shards import TarProblem, expand_pattern, iter_tar_samples

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
            matches = expand_pattern(item)
        except FileNotFoundError as e:
            raise InputError(f"input pattern matched no files: {item} ({e})") from None
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


def read_unit(unit: InputUnit, counts: Counts, errors: list | None = None,
              max_member_bytes: int | None = None) -> Iterator[RawRecord]:
    """errors: receives {"file", "unit", "reason", "error"} for each read error (also counted in `counts`).
    max_member_bytes: tar members over it are skipped unread (decode.max_file_bytes; other inputs are capped
    when decoded)."""
    errors = errors if errors is not None else []
    if unit.kind == "factory":
        fn = load_factory(unit.spec["factory"])
        yield from fn(unit.spec["unit"], **unit.spec.get("kwargs", {}))
    elif unit.kind == "webdataset":
        yield from read_webdataset(unit, counts, errors, max_member_bytes)
    else:
        yield from READERS[unit.kind](unit, counts, errors)


def read_error(unit: InputUnit, counts: Counts, errors: list, reason: str, exc: BaseException | str,
               where: str = "") -> None:
    """Counts a file that could not be read (to the end): read.errors.<reason>, a line on stderr naming the file,
    and an entry in `errors` (stats.json read_errors). `exc` is the exception, or a message that says it all."""
    msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
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

def read_webdataset(unit: InputUnit, counts: Counts, errors: list,
                    max_member_bytes: int | None = None) -> Iterator[RawRecord]:
    """Members `{key}.jpg|png|...`, `{key}.txt`, `{key}.json` (img2dataset: url, caption, page_url).

    Read with retrieval.shards: every problem is counted under read.<what>.tar_<reason> (see count_tar_problem),
    so a torn, corrupt or odd shard never loses records silently."""
    seen: set[str] = set()
    for sample in iter_tar_samples(unit.path, lambda p: count_tar_problem(unit, counts, errors, p, seen),
                                   max_member_bytes):
        yield _webdataset_record(unit, sample.key, sample.members, counts)


# Problems that cost records or data go to stats.json read_errors (with the file); member skips are only counted.
TAR_ERRORS = ("unreadable", "truncated", "corrupt")


def count_tar_problem(unit: InputUnit, counts: Counts, errors: list, problem: TarProblem, seen: set) -> None:
    """read.errors.tar_<reason> for a shard that breaks off or is damaged (listed in read_errors, named on
    stderr); read.dropped.<reason> for a sample dropped whole (duplicate_key, or torn mid-sample, with the
    error as well); read.skipped.<reason> for empty shards and members that belong to no sample (directories,
    links, hidden files, names without an extension, members over decode.max_file_bytes, skipped unread): the
    first of each reason per file is listed too."""
    if problem.reason in TAR_ERRORS:
        read_error(unit, counts, errors, f"tar_{problem.reason}", problem.detail)
    elif problem.reason == "duplicate_key":
        counts.add("read.dropped.duplicate_key")
    else:
        counts.add(f"read.skipped.tar_{problem.reason}")
    if problem.drops_sample and problem.reason != "duplicate_key":
        counts.add(f"read.dropped.tar_{problem.reason}")
    if problem.reason not in TAR_ERRORS and problem.reason not in seen:
        seen.add(problem.reason)
        errors.append({"file": unit.path, "unit": unit.index, "reason": f"tar_{problem.reason}",
                       "error": problem.detail})


def _json_object(data: bytes, counts: Counts) -> dict:
    """A sidecar's metadata; anything but a JSON object (a list, a string, null, bad JSON) is counted and ignored."""
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        counts.add("read.errors.bad_json")
        return {}
    if not isinstance(meta, dict):
        counts.add("read.errors.json_not_object")
        return {}
    return meta


def text_field(value, counts: Counts, name: str) -> str:
    """A text field of an input row: a string as is; None or missing -> ""; any other type (a number, a list)
    is not text: counted as read.repaired.<name>_not_text and blanked."""
    if value is None or isinstance(value, str):
        return value or ""
    counts.add(f"read.repaired.{name}_not_text")
    return ""


def url_field(value, counts: Counts, name: str) -> str | None:
    """A URL field: a string, or None; any other type is counted (read.repaired.<name>_not_text) and dropped."""
    return text_field(value, counts, name) or None


def _webdataset_record(unit: InputUnit, key: str, parts: dict, counts: Counts) -> RawRecord:
    meta = _json_object(parts["json"], counts) if "json" in parts else {}
    image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
    if "txt" in parts:
        text = parts["txt"].decode("utf-8", errors="replace")
    else:
        text = text_field(meta.get("caption"), counts, "caption")
    return RawRecord(key=f"{unit.uid}:{key}", source=unit.path, page_url=url_field(meta.get("page_url"), counts,
                     "page_url"), image_url=url_field(meta.get("url"), counts, "image_url"), text=text,
                     image_bytes=image)


# --- parquet / jsonl manifests -----------------------------------------------------------------------------

def _manifest_record(unit: InputUnit, row: dict, n: int, counts: Counts) -> RawRecord:
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
    elif image_bytes is not None and not isinstance(image_bytes, (bytes, bytearray)):
        counts.add("read.repaired.image_bytes_not_bytes")
        image_bytes = b""
    image_path = text_field(image_path, counts, "image_path")
    if image_path and not image_bytes:
        image_path = resolve_image_path(image_path, s.get("image_root") or Path(unit.path).parent)
    key_col = s.get("key_col")
    key = str(row.get(key_col)) if key_col and row.get(key_col) is not None else f"{n:09d}"
    return RawRecord(key=f"{unit.uid}:{key}", source=unit.path,
                     page_url=url_field(row.get(s.get("page_url_col", "page_url")), counts, "page_url"),
                     image_url=url_field(row.get(s.get("image_url_col", "image_url")), counts, "image_url")
                     or image_path or None,
                     text=text_field(row.get(s.get("text_col", "text")), counts, "text"),
                     image_bytes=bytes(image_bytes) if image_bytes else None,
                     image_path=None if image_bytes else (image_path or None))


def resolve_image_path(path: str, root) -> str:
    """A manifest's image path: relative paths resolve against the input's image_root (default: its folder)."""
    p = Path(path)
    return str(p if p.is_absolute() else Path(root) / p)


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
                yield _manifest_record(unit, row, first + done, counts)
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
            if not isinstance(row, dict):
                counts.add("read.errors.json_not_object")
                row = {}
            yield _manifest_record(unit, row, n, counts)


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
                path = resolve_image_path(path, s.get("image_root") or Path(unit.path).parent)
            yield RawRecord(key=f"{unit.uid}:{n:09d}", source=unit.path, page_url=row.get("page_url"),
                            image_url=row.get("image_url"), text=text, image_bytes=image_bytes or None,
                            image_path=None if image_bytes else (path or None))


READERS = {"webdataset": read_webdataset, "parquet": read_parquet, "jsonl": read_jsonl, "wit": read_wit}
