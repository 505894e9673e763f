"""Webdataset tar shards: the one tar reader and the one shard-pattern expander every package uses.

A webdataset sample is the run of consecutive members that share a key: ``{key}.jpg``, ``{key}.txt``,
``{key}.json`` ... (key = member path up to the first dot of its file name, extension = the rest, lower-cased).

One error policy. Nothing is lost silently: every member or sample the reader cannot hand on is reported
once, as a `TarProblem` with a short stable ``reason`` (the thing callers count) and a ``detail`` that names
the shard file and the place. Reasons:

- ``unreadable``: the file cannot be opened as a tar (not a tar, unreadable, bad first header);
- ``empty``: a valid tar with no usable members (0 bytes, only the end marker, only directories ...);
- ``truncated``: the shard ends inside a member or a header, or without the end-of-archive marker
  (a torn copy, also a torn gzip stream); the sample being read is dropped;
- ``corrupt``: bytes the reader had to skip: a bad header checksum or a zeroed block mid-shard. Reading
  goes on at the next valid header, so only the members inside the damaged stretch are lost;
- ``duplicate_key``: a key that already had a sample in this shard (webdataset would merge or overwrite
  the two); the later sample is dropped;
- ``member_directory``, ``member_link``, ``member_special``, ``member_hidden``, ``member_no_extension``:
  a member that cannot belong to a sample (skipped, one count each);
- ``member_too_large``: a member over the caller's ``max_member_bytes``, skipped unread (a tar header can
  declare any size; reading it whole could exhaust memory). Its sample goes on without it.

``drops_sample`` says whether a problem cost a whole sample (``truncated`` mid-sample, ``duplicate_key``)
rather than a member or an unknown tail.
"""
from __future__ import annotations

import glob
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import RetrievalError, clean_reason

__all__ = ["TAR_SUFFIXES", "TarProblem", "TarSample", "ShardOpenError", "TarShard", "iter_tar_samples",
           "split_member_name", "expand_pattern", "expand_shard_patterns", "PROBLEM_REASONS"]

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
PROBLEM_REASONS = ("unreadable", "empty", "truncated", "corrupt", "duplicate_key", "member_directory",
                   "member_link", "member_special", "member_hidden", "member_no_extension", "member_too_large")
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)
_END_MARKER = 2 * tarfile.BLOCKSIZE


@dataclass
class TarProblem:
    """Something in a shard that the reader could not hand on; counted by ``reason``."""

    reason: str
    shard: str
    detail: str
    key: str | None = None
    drops_sample: bool = False

    def __str__(self) -> str:
        return f"{self.shard}: {self.detail}"


@dataclass
class TarSample:
    """One sample: ``members`` maps an extension (``jpg``, ``txt``, ``ex0.jpg`` ...) to its bytes."""

    key: str
    shard: str
    members: dict[str, bytes] = field(default_factory=dict)
    infos: dict[str, tarfile.TarInfo] = field(default_factory=dict)
    compressed: bool = False  # members of a compressed shard cannot be read back by byte offset


class ShardOpenError(RetrievalError, ValueError):
    """A shard that cannot be opened as a tar archive; ``reason`` says why (no object reprs)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = clean_reason(reason)
        super().__init__(f"cannot open shard {self.path}: {self.reason}")


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset convention: key = folder/basename-before-first-dot, ext = the rest (lower-case)."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _member_skip_reason(info: tarfile.TarInfo) -> str | None:
    if info.isdir():
        return "member_directory"
    if info.issym() or info.islnk():
        return "member_link"
    if not info.isfile():
        return "member_special"
    base = os.path.basename(info.name.rstrip("/"))
    if base.startswith("."):
        return "member_hidden"  # ".DS_Store", macOS "._x.jpg" resource forks
    if "." not in base or base.endswith("."):
        return "member_no_extension"
    return None


def _exc_text(exc: BaseException) -> str:
    text = clean_reason(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _open_reason(exc: BaseException) -> str:
    text = clean_reason(exc)
    if text in ("invalid header", "bad checksum", "truncated header"):
        return f"not a tar archive ({text} in the first block)"
    return _exc_text(exc)


def _tar_mode(name: str) -> str:
    if name.endswith((".tar.gz", ".tgz")):
        return "r:gz"
    if name.endswith(".tar.bz2"):
        return "r:bz2"
    if name.endswith(".tar.xz"):
        return "r:xz"
    return "r:" if name.endswith(".tar") else "r:*"


class TarShard:
    """An opened shard. The constructor opens it (ShardOpenError when it is not a readable tar; a 0-byte file
    opens as an empty shard); iterating yields its TarSamples in order and passes every problem to
    ``on_problem``. ``position`` is the bytes of the shard file consumed so far, for progress bars."""

    def __init__(self, path: str | os.PathLike, on_problem: Callable[[TarProblem], None] | None = None,
                 max_member_bytes: int | None = None):
        self.path = Path(path)
        self.max_member_bytes = max_member_bytes
        self.name = str(path)
        self.problems: list[TarProblem] = []
        self._on_problem = on_problem
        self._archive = None
        try:
            self.size = self.path.stat().st_size
            if not self.path.is_file():
                raise ShardOpenError(self.name, "not a regular file")
            self._raw = open(self.path, "rb")
        except OSError as exc:
            raise ShardOpenError(self.name, exc.strerror or type(exc).__name__) from exc
        if self.size == 0:
            return  # an empty file is an empty shard (reported when iterated)
        mode = _tar_mode(self.path.name)
        try:
            self._archive = tarfile.open(fileobj=self._raw, mode=mode)
        except _READ_ERRORS as exc:
            try:  # a compressed shard named .tar, or a plain tar named .tar.gz
                self._raw.seek(0)
                self._archive = tarfile.open(fileobj=self._raw, mode="r:*")
            except _READ_ERRORS:
                self._raw.close()
                raise ShardOpenError(self.name, _open_reason(exc)) from exc
        # From here on, a bad header is skipped (reading resumes at the next valid one) instead of ending the
        # archive silently; the skipped bytes are reported as "corrupt".
        self._archive.ignore_zeros = True
        self.compressed = self._archive.fileobj is not self._raw

    compressed = False

    @property
    def position(self) -> int:
        return self.size if self._raw.closed else self._raw.tell()

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
        self._raw.close()

    def _report(self, reason: str, detail: str, key: str | None = None, drops_sample: bool = False) -> None:
        problem = TarProblem(reason, self.name, detail, key, drops_sample)
        self.problems.append(problem)
        if self._on_problem is not None:
            self._on_problem(problem)

    def __iter__(self) -> Iterator[TarSample]:
        try:
            if self._archive is None:
                self._report("empty", "empty file (0 bytes)")
                return
            yield from self._samples()
        finally:
            self.close()

    def _samples(self) -> Iterator[TarSample]:
        archive = self._archive
        seen: set[str] = set()
        sample: TarSample | None = None
        dropping: str | None = None  # a duplicate key whose members are being skipped
        n_samples, end = 0, 0  # end: where the previous member's data ended (the next header should start)
        reading: tarfile.TarInfo | None = None
        try:
            for info in archive:
                if info.offset > end:
                    self._skipped(end, info.offset)
                end = archive.offset
                skip = _member_skip_reason(info)
                if skip is not None:
                    self._report(skip, f"member {info.name!r} skipped ({skip.replace('_', ' ')})")
                    continue
                key, ext = split_member_name(info.name)
                if sample is None or key != sample.key:
                    if dropping is not None and key == dropping:
                        continue
                    dropping = None
                    if sample is not None:
                        n_samples += 1
                        yield sample
                        sample = None
                    if key in seen:
                        dropping = key
                        self._report("duplicate_key", f"a second sample with key {key!r} (member {info.name!r}) "
                                     "dropped", key, drops_sample=True)
                        continue
                    seen.add(key)
                    sample = TarSample(key, self.name, compressed=self.compressed)
                elif ext in sample.members:  # the same key again, adjacent: the sample repeats
                    n_samples += 1
                    yield sample
                    sample, dropping = None, key
                    self._report("duplicate_key", f"a second sample with key {key!r} (member {info.name!r}) "
                                 "directly follows the first; dropped", key, drops_sample=True)
                    continue
                if self.max_member_bytes is not None and info.size > self.max_member_bytes:
                    self._report("member_too_large", f"member {info.name!r} skipped unread: {info.size} bytes, over "
                                 f"the cap of {self.max_member_bytes}", key)
                    continue
                reading = info
                handle = archive.extractfile(info)
                data = handle.read() if handle is not None else b""
                if len(data) != info.size:
                    raise EOFError(f"read {len(data)} of {info.size} bytes")
                sample.members[ext], sample.infos[ext], reading = data, info, None
        except _READ_ERRORS as exc:
            if reading is None and sample is not None:  # broke off between members: those read are whole
                n_samples += 1
                yield sample
                sample = None
            self._torn(exc, reading, sample, n_samples)
            return
        if sample is not None:
            n_samples += 1
            yield sample
        self._check_tail(end)
        if n_samples == 0 and not any(p.reason in ("truncated", "corrupt") for p in self.problems):
            self._report("empty", "no samples (an empty archive, or only skipped members)")

    def _torn(self, exc: BaseException, reading: tarfile.TarInfo | None, sample: TarSample | None,
              n_samples: int) -> None:
        """Reading broke off: the sample in progress is lost with the rest of the shard."""
        if reading is not None and not self.compressed and reading.offset_data + reading.size > self.size:
            where = (f"truncated inside member {reading.name}: it needs {reading.size} bytes from byte "
                     f"{reading.offset_data} but the file ends at byte {self.size}")
        elif reading is not None:
            where = f"truncated or corrupt inside member {reading.name} ({_exc_text(exc)})"
        else:
            where = f"truncated or corrupt after byte {self._archive.offset} ({_exc_text(exc)})"
        lost = f"; sample {sample.key!r} dropped" if sample is not None else ""
        self._report("truncated", f"shard is {where}, after {n_samples} samples{lost}; "
                     "the rest of the shard is lost", sample.key if sample is not None else None,
                     drops_sample=sample is not None)

    def _stream(self):
        return self._raw if not self.compressed else self._archive.fileobj

    def _skipped(self, start: int, stop: int) -> None:
        """Bytes between two members that tarfile skipped as invalid headers: corrupt unless all zero."""
        stream = self._stream()
        try:
            stream.seek(start)
            data = stream.read(stop - start)
        except _READ_ERRORS:
            data = b"\1"
        if data.strip(b"\0"):
            self._report("corrupt", f"{stop - start} bytes from byte {start} are not valid tar headers "
                         "(bad checksum or zeroed block); the members inside them are lost")

    def _check_tail(self, end: int) -> None:
        """After the last member: only zero blocks (the end-of-archive marker) may follow."""
        stream = self._stream()
        total, junk = 0, False
        try:
            stream.seek(end)
            while block := stream.read(1 << 16):
                junk = junk or bool(block.strip(b"\0"))
                total += len(block)
        except _READ_ERRORS as exc:
            self._report("truncated", f"shard is truncated after byte {end} ({_exc_text(exc)})")
            return
        if junk and total < tarfile.BLOCKSIZE:
            self._report("truncated", f"shard is cut inside a tar header at byte {end}; samples after that point "
                         "are lost")
        elif junk:
            self._report("corrupt", f"unreadable data after byte {end} (no valid tar header); its members are lost")
        elif total < _END_MARKER:
            self._report("truncated", f"shard ends at byte {end} without the end-of-archive marker: it was cut "
                         "short, and samples after that point are lost")


def iter_tar_samples(path: str | os.PathLike, on_problem: Callable[[TarProblem], None],
                     max_member_bytes: int | None = None) -> Iterator[TarSample]:
    """The samples of one shard; every problem (including a shard that cannot be opened, as ``unreadable``)
    goes to ``on_problem``, so a caller counts problems in one place. Members over ``max_member_bytes`` are
    skipped unread (``member_too_large``)."""
    try:
        shard = TarShard(path, on_problem, max_member_bytes)
    except ShardOpenError as exc:
        on_problem(TarProblem("unreadable", str(path), exc.reason))
        return
    yield from shard


# ----------------------------------------------------------------------------- shard patterns

def expand_pattern(pattern: str | os.PathLike) -> list[str]:
    """Brace ranges ("data/{00000..00009}.tar", "{a,b}.tar") then globs ("data/*.tar"), with "~" expanded.
    Plain paths come back as given (existence is the caller's question); a glob that matches nothing raises
    FileNotFoundError naming the pattern."""
    from braceexpand import braceexpand

    out: list[str] = []
    for spec in braceexpand(str(pattern)):
        spec = os.path.expanduser(spec)
        if glob.has_magic(spec):
            matched = sorted(glob.glob(spec))
            if not matched:
                raise FileNotFoundError(f"pattern {spec!r} matches no files")
            out.extend(matched)
        else:
            out.append(spec)
    return out


def expand_shard_patterns(patterns: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Shard specs -> existing shard files, in order, without repeats: paths, globs, brace ranges, or folders
    (their tar files). FileNotFoundError names a spec that yields nothing."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    shards: list[Path] = []
    for pattern in patterns:
        for spec in expand_pattern(pattern):
            path = Path(spec)
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.name.endswith(TAR_SUFFIXES))
                if not found:
                    raise FileNotFoundError(f"no tar shards in folder {path}")
                shards.extend(found)
            elif path.is_file():
                shards.append(path)
            else:
                raise FileNotFoundError(f"shard not found: {path}")
    return list(dict.fromkeys(p.resolve() for p in shards))
