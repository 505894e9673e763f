"""Readers for (image, caption) pairs: webdataset tar shards and plain folders.

Webdataset / img2dataset layout: a tar whose members `{key}.jpg`, `{key}.txt`,
`{key}.json` form one sample (members of a sample are consecutive; the key is the
member path up to the first dot of its file name). The JSON carries `url`,
`caption`, `page_url` and whatever else img2dataset wrote.

Folder layout: image files anywhere under a root, each with an optional caption
in a same-stem `.txt` and optional metadata in a same-stem `.json`.

Each sample carries a `location` that lets the database read the image again
later: a file path, or a shard path + member name + byte offset/size.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .errors import RetrievalError, clean_reason
from .images import IMAGE_EXTENSIONS

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass
class PairSample:
    """One (image, caption) pair as read from a source, before decoding."""

    key: str
    caption: str
    meta: dict
    location: dict  # {"kind": "tar"|"file", "path", "member", "offset", "size"}
    image_bytes: bytes | None = None  # tar members are read eagerly; files are read by path
    error: str | None = None  # set when the sample cannot be used (e.g. no image member)
    warnings: list[str] = field(default_factory=list)  # non-fatal problems (bad JSON, bad UTF-8)

    @property
    def image_source(self):
        return self.image_bytes if self.image_bytes is not None else self.location["path"]


def expand_shards(patterns: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand shard specs: paths, globs, brace ranges ("data/{00000..00009}.tar") or folders of tars."""
    from braceexpand import braceexpand

    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    shards: list[Path] = []
    for pattern in patterns:
        for spec in braceexpand(str(pattern)):
            path = Path(spec).expanduser()
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.name.endswith(TAR_SUFFIXES))
                if not found:
                    raise FileNotFoundError(f"no tar shards in folder {path}")
                shards.extend(found)
            elif any(ch in spec for ch in "*?["):
                found = sorted(Path(p) for p in glob.glob(spec))
                if not found:
                    raise FileNotFoundError(f"no shards match {spec!r}")
                shards.extend(found)
            elif path.is_file():
                shards.append(path)
            else:
                raise FileNotFoundError(f"shard not found: {path}")
    unique = list(dict.fromkeys(p.resolve() for p in shards))
    return unique


def _split_member(name: str) -> tuple[str, str]:
    """webdataset convention: key = dirname/basename-before-first-dot, ext = the rest (lowercase)."""
    directory, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _decode_text(data: bytes, key: str, what: str, warnings: list[str]) -> str:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        warnings.append(f"{what} is not valid UTF-8; undecodable bytes replaced")
        return data.decode("utf-8", errors="replace").strip()


def _parse_json(data: bytes, what: str, warnings: list[str]) -> dict:
    try:
        value = json.loads(data.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        warnings.append(f"{what} is not valid JSON ({exc}); metadata ignored")
        return {}
    if not isinstance(value, dict):
        warnings.append(f"{what} is JSON but not an object; metadata ignored")
        return {}
    return value


def _make_sample(key: str, members: dict, shard: Path, compressed: bool) -> PairSample:
    """Turn the grouped members {ext: (TarInfo, bytes)} of one key into a PairSample."""
    warnings: list[str] = []
    meta = _parse_json(members["json"][1], f"{key}.json", warnings) if "json" in members else {}
    if "txt" in members:
        caption = _decode_text(members["txt"][1], key, f"{key}.txt", warnings)
    else:
        caption = str(meta.get("caption") or "").strip()
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image_ext is None:
        location = {"kind": "tar", "path": str(shard), "member": None, "offset": -1, "size": -1}
        return PairSample(key, caption, meta, location, None,
                          error=f"no image member (found: {sorted(members) or 'nothing'})", warnings=warnings)
    info, data = members[image_ext]
    location = {"kind": "tar", "path": str(shard), "member": info.name,
                "offset": -1 if compressed else int(info.offset_data), "size": int(info.size)}
    return PairSample(key, caption, meta, location, data, warnings=warnings)


class ShardOpenError(RetrievalError, ValueError):
    """A shard could not be opened as a tar archive; `reason` says why (no object reprs)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = clean_reason(reason)
        super().__init__(f"cannot open shard {self.path}: {self.reason}")


def _tar_mode(name: str) -> str:
    if name.endswith((".tar.gz", ".tgz")):
        return "r:gz"
    if name.endswith(".tar.bz2"):
        return "r:bz2"
    if name.endswith(".tar.xz"):
        return "r:xz"
    return "r:" if name.endswith(".tar") else "r:*"


def _open_reason(exc: BaseException) -> str:
    text = clean_reason(exc)
    if text == "empty file":
        return "empty file (0 bytes)"
    if text in ("invalid header", "bad checksum", "truncated header"):
        return f"not a tar archive ({text} in the first block)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ShardReader:
    """An opened webdataset shard: iterate for its samples in order.

    Opening happens in the constructor, so an unreadable shard fails before any
    sample is read (ShardOpenError). `position` is how many bytes of the shard
    file have been consumed, for progress bars. A shard that is truncated or
    corrupt part-way yields the samples read so far and then one sample with
    `error` set that says where and why it stopped.
    """

    def __init__(self, shard: str | os.PathLike):
        self.path = Path(shard).resolve()
        try:
            self.size = self.path.stat().st_size
            self._raw = open(self.path, "rb")
        except OSError as exc:
            raise ShardOpenError(self.path, exc.strerror or type(exc).__name__) from exc
        mode = _tar_mode(self.path.name)
        try:
            self._archive = tarfile.open(fileobj=self._raw, mode=mode)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            reason = _open_reason(exc)
            if mode == "r:" and self.size:  # a compressed shard named .tar still works
                try:
                    self._raw.seek(0)
                    self._archive, mode = tarfile.open(fileobj=self._raw, mode="r:*"), "r:*"
                except (tarfile.TarError, OSError, EOFError, zlib.error):
                    self._raw.close()
                    raise ShardOpenError(self.path, reason) from exc
            else:
                self._raw.close()
                raise ShardOpenError(self.path, reason) from exc
        # Compressed members cannot be read back by seeking to a byte offset.
        self.compressed = self._archive.fileobj is not self._raw

    @property
    def position(self) -> int:
        return self.size if self._raw.closed else self._raw.tell()

    def close(self) -> None:
        self._archive.close()
        self._raw.close()

    def __iter__(self) -> Iterator[PairSample]:
        archive, shard = self._archive, self.path
        current_key, members, reading = None, {}, None
        try:
            try:
                for info in archive:
                    if not info.isfile():
                        continue
                    key, ext = _split_member(info.name)
                    if key != current_key:
                        if current_key is not None:
                            yield _make_sample(current_key, members, shard, self.compressed)
                        current_key, members = key, {}
                    if not ext or ext.startswith("__"):  # webdataset treats "__key__"-style names as internal
                        continue
                    reading = info
                    handle = archive.extractfile(info)
                    data = handle.read() if handle is not None else b""
                    if len(data) != info.size:
                        raise EOFError(f"read {len(data)} of {info.size} bytes")
                    members[ext], reading = (info, data), None
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                if reading is not None:
                    yield self._broken_member(current_key, members, reading, exc)
                else:
                    if current_key is not None:
                        yield _make_sample(current_key, members, shard, self.compressed)
                    yield self._rest(f"shard is corrupt or truncated after byte {archive.offset}: "
                                     f"{_open_reason(exc)}")
                return
            if current_key is not None:
                yield _make_sample(current_key, members, shard, self.compressed)
            tail = self._unread_tail(archive.offset)
            if tail:
                yield self._rest(tail)
        finally:
            self.close()

    def _broken_member(self, key: str, members: dict, info: tarfile.TarInfo, exc: BaseException) -> PairSample:
        """The sample whose member could not be read in full, with an exact reason."""
        end = info.offset_data + info.size
        if not self.compressed and end > self.size:
            reason = (f"shard is truncated inside member {info.name}: the member needs {info.size} bytes from "
                      f"byte {info.offset_data} but the shard ends at byte {self.size}")
        else:
            reason = f"cannot read member {info.name} ({info.size} bytes): {_open_reason(exc)}"
        sample = _make_sample(key, members, self.path, self.compressed)
        sample.error = reason
        sample.location["member"] = info.name
        return sample

    def _rest(self, reason: str) -> PairSample:
        return PairSample(f"{self.path.name}:<rest>", "", {},
                          {"kind": "tar", "path": str(self.path), "member": None, "offset": -1, "size": -1},
                          error=reason)

    def _unread_tail(self, offset: int) -> str | None:
        """tarfile ends iteration silently at a bad header after the first member; look
        at what follows the last member: only zero blocks (end of archive) are fine."""
        stream = self._raw if not self.compressed else self._archive.fileobj
        try:
            stream.seek(offset)
            block = stream.read(1024)
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            return f"shard is corrupt after byte {offset}: {_open_reason(exc)}"
        if block.strip(b"\0"):
            where = f"; {self.size - offset} bytes were not read" if not self.compressed else ""
            return f"invalid or truncated tar header at byte {offset}{where} (corrupt shard)"
        return None


def open_webdataset_shard(shard: str | os.PathLike) -> ShardReader:
    """Open a tar shard (ShardOpenError, a ValueError, when it cannot be opened)."""
    return ShardReader(shard)


def iter_webdataset_shard(shard: str | os.PathLike) -> Iterator[PairSample]:
    """Yield the samples of one tar shard in order. Raises ShardOpenError for an unreadable tar."""
    yield from ShardReader(shard)


def list_folder_images(root: str | os.PathLike) -> list[Path]:
    """Image files under `root` (recursive, sorted, hidden files skipped)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
                files.append(Path(dirpath) / name)
    return files


def folder_sample(root: Path, path: Path) -> PairSample:
    """The sample for one image file: key = relative path without extension."""
    warnings: list[str] = []
    key = path.relative_to(root).with_suffix("").as_posix()
    meta = {}
    json_path = path.with_suffix(".json")
    if json_path.is_file():
        meta = _parse_json(json_path.read_bytes(), str(json_path), warnings)
    txt_path = path.with_suffix(".txt")
    if txt_path.is_file():
        caption = _decode_text(txt_path.read_bytes(), key, str(txt_path), warnings)
    else:
        caption = str(meta.get("caption") or "").strip()
    location = {"kind": "file", "path": str(path), "member": None, "offset": -1,
                "size": path.stat().st_size}
    return PairSample(key, caption, meta, location, None, warnings=warnings)


def read_location(location: dict) -> bytes:
    """Read the encoded image bytes at a sample location (file, or tar member by offset)."""
    path = Path(location["path"])
    if not path.is_file():
        raise FileNotFoundError(f"{'shard' if location['kind'] == 'tar' else 'image file'} not found: {path}")
    if location["kind"] == "file":
        return path.read_bytes()
    if location["kind"] != "tar":
        raise ValueError(f"unknown location kind {location['kind']!r}")
    member, offset, size = location.get("member"), int(location.get("offset", -1)), int(location.get("size", -1))
    if offset >= 0:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise ValueError(f"{path}:{member} is truncated ({len(data)} of {size} bytes)")
        return data
    with tarfile.open(path, mode="r:*") as archive:  # compressed shards cannot be seeked into
        handle = archive.extractfile(member)
        if handle is None:
            raise ValueError(f"{path}:{member} is not a regular file")
        return handle.read()
