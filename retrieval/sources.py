"""Readers for (image, caption) pairs: webdataset tar shards and plain folders.

Webdataset / img2dataset layout: a tar whose members `{key}.jpg`, `{key}.txt`,
`{key}.json` form one sample (members of a sample are consecutive; the key is the
member path up to the first dot of its file name). The JSON carries `url`,
`caption`, `page_url` and whatever else img2dataset wrote.

Folder layout: image files anywhere under a root, each with an optional caption
in a same-stem `.txt` and optional metadata in a same-stem `.json`.

Shards are read by `retrieval.shards` (the one tar reader of the project); this
module turns its samples and problems into PairSamples. Each sample carries a
`location` that lets the database read the image again later: a file path, or a
shard path + member name + byte offset/size.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .images import IMAGE_EXTENSIONS
from .shards import TAR_SUFFIXES, ShardOpenError, TarProblem, TarSample, TarShard, expand_shard_patterns

__all__ = ["PairSample", "ShardOpenError", "ShardReader", "TAR_SUFFIXES", "expand_shards", "folder_sample",
           "iter_webdataset_shard", "list_folder_images", "open_webdataset_shard", "read_location"]


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
    return expand_shard_patterns(patterns)


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


def _make_sample(sample: TarSample) -> PairSample:
    """A TarSample (members {ext: bytes}) as a PairSample; its image member is located for reading back."""
    warnings: list[str] = []
    members, key = sample.members, sample.key
    meta = _parse_json(members["json"], f"{key}.json", warnings) if "json" in members else {}
    if "txt" in members:
        caption = _decode_text(members["txt"], key, f"{key}.txt", warnings)
    else:
        caption = _text_field(meta.get("caption"))
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image_ext is None:
        location = {"kind": "tar", "path": sample.shard, "member": None, "offset": -1, "size": -1}
        return PairSample(key, caption, meta, location, None,
                          error=f"no image member (found: {sorted(members) or 'nothing'})", warnings=warnings)
    info = sample.infos[image_ext]
    location = {"kind": "tar", "path": sample.shard, "member": info.name,
                "offset": -1 if sample.compressed else int(info.offset_data), "size": int(info.size)}
    return PairSample(key, caption, meta, location, members[image_ext], warnings=warnings)


def _text_field(value) -> str:
    """A caption taken from JSON metadata: only a string counts (a number or list is not a caption)."""
    return value.strip() if isinstance(value, str) else ""


class ShardReader:
    """An opened webdataset shard: iterate for its samples in order.

    Opening happens in the constructor, so an unreadable or empty (0-byte) shard fails before any sample is
    read (ShardOpenError). `position` is how many bytes of the shard file have been consumed, for progress
    bars. Every problem the tar reader reports (retrieval.shards: torn or corrupt shard, duplicate key,
    skipped member ...) comes out as a sample with `error` set: the sample's own key when the problem cost
    a sample, else `<shard name>:<reason>`.
    """

    def __init__(self, shard: str | os.PathLike):
        self.path = Path(shard).resolve()
        self._problems: list[TarProblem] = []
        self._shard = TarShard(self.path, self._problems.append)
        if self._shard.size == 0:
            self._shard.close()
            raise ShardOpenError(self.path, "empty file (0 bytes)")
        self.size = self._shard.size
        self.compressed = self._shard.compressed

    @property
    def position(self) -> int:
        return self._shard.position

    def close(self) -> None:
        self._shard.close()

    def __iter__(self) -> Iterator[PairSample]:
        for sample in self._shard:
            yield from self._drain()
            yield _make_sample(sample)
        yield from self._drain()

    def _drain(self) -> Iterator[PairSample]:
        while self._problems:
            problem = self._problems.pop(0)
            key = problem.key if problem.drops_sample and problem.key else f"{self.path.name}:<{problem.reason}>"
            yield PairSample(key, "", {}, {"kind": "tar", "path": str(self.path), "member": None, "offset": -1,
                                           "size": -1}, error=problem.detail)


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
        caption = _text_field(meta.get("caption"))
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
