"""Atomic file writes: the one implementation every package uses.

A file is written to a temporary name beside its final path, flushed to disk, and renamed over the
final path, so a crash or kill leaves the old file or the new one, never a half-written one. The
rename itself is flushed by syncing the folder (POSIX).

This lives in ``retrieval`` because it is the lowest package that writes files: ``suti`` and
``dataset_builder`` both import it from here.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_path"]


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or, on POSIX, a folder's) contents to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # folders cannot be opened on some platforms; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is flushed and renamed over ``path``.
    On an error the temporary file is removed and ``path`` is left as it was.

    ``suffix`` ends the temporary name, for writers that insist on an extension (``np.save`` adds
    ``.npy`` to any name without one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if os.name == "posix":
        fsync_path(path.parent)  # the rename itself


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """JSON with a trailing newline, UTF-8, non-ASCII kept as is."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")
