"""Uploaded subject photos, held in one private temporary folder that is removed when the server stops.

A photo is streamed to disk with its size capped (a too-large upload is cut off and deleted, never held
in memory whole), then decoded once to check that it is an image. Unused photos expire after a while;
photos that a queued or running request needs are pinned until it finishes.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..images import ImageLoadError, open_image, to_rgb

THUMB_SIZE = 256


class UploadError(ValueError):
    """A photo the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def display_name(filename: str | None) -> str:
    """A file name fit to show in messages: no folders, no control characters, not too long."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()
    return (name[:80] + "...") if len(name) > 83 else (name or "photo")


def format_bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


@dataclass
class Upload:
    id: str
    name: str
    path: Path
    size: int
    width: int
    height: int
    sha256: str
    thumbnail: bytes  # JPEG, for the page
    last_used: float = field(default_factory=time.monotonic)
    pins: int = 0
    removed: bool = False  # removed by the user while a request held it: deleted when it is done

    def describe(self) -> dict:
        return {"id": self.id, "name": self.name, "bytes": self.size, "width": self.width, "height": self.height,
                "thumbnail": f"/api/uploads/{self.id}/thumbnail.jpg"}


class UploadWriter:
    """Receives one photo chunk by chunk; ``finish`` checks it and registers it with the store."""

    def __init__(self, store: "UploadStore", filename: str | None):
        self.store, self.name = store, display_name(filename)
        self.id = secrets.token_hex(8)
        self.path = store.folder / f"{self.id}.upload"
        self.size = 0
        self._hash = hashlib.sha256()
        self._file = open(self.path, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.store.max_bytes:
            self.abort()
            raise UploadError(f"{self.name}: the photo is larger than the {format_bytes(self.store.max_bytes)} "
                              f"limit", status=413)
        self._hash.update(chunk)
        self._file.write(chunk)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)

    def finish(self) -> Upload:
        self._file.close()
        try:
            if self.size == 0:
                raise UploadError(f"{self.name}: the file is empty")
            try:
                img = to_rgb(open_image(self.path, name=self.name))
            except ImageLoadError as e:
                raise UploadError(f"{e}. Upload a photo (JPEG, PNG, WebP, ...)") from e
            thumb = img.copy()
            thumb.thumbnail((THUMB_SIZE, THUMB_SIZE))
            buf = io.BytesIO()
            thumb.save(buf, format="JPEG", quality=85)
            upload = Upload(self.id, self.name, self.path, self.size, img.width, img.height,
                            self._hash.hexdigest(), buf.getvalue())
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        self.store._add(upload)
        return upload


class UploadStore:
    def __init__(self, max_bytes: int, max_uploads: int = 200, ttl_s: float = 3600.0):
        self.max_bytes, self.max_uploads, self.ttl_s = max_bytes, max_uploads, ttl_s
        self.folder = Path(tempfile.mkdtemp(prefix="suti-serve-uploads-"))
        os.chmod(self.folder, 0o700)  # other users of the machine cannot read the photos
        self._uploads: dict[str, Upload] = {}
        self._lock = threading.Lock()

    def begin(self, filename: str | None, declared_size: int | None = None) -> UploadWriter:
        """Start receiving a photo. Refuses at once when the declared size is over the cap or the store is full."""
        name = display_name(filename)
        if declared_size is not None and declared_size > self.max_bytes:
            raise UploadError(f"{name}: the photo is {format_bytes(declared_size)}, over the "
                              f"{format_bytes(self.max_bytes)} limit", status=413)
        self.expire()
        with self._lock:
            if len(self._uploads) >= self.max_uploads:
                raise UploadError(f"the server holds {len(self._uploads)} uploaded photos, its limit; "
                                  f"remove some or try again later", status=503)
        return UploadWriter(self, filename)

    def _add(self, upload: Upload) -> None:
        with self._lock:
            self._uploads[upload.id] = upload

    def get(self, upload_id: str) -> Upload:
        with self._lock:
            up = self._uploads.get(upload_id)
            if up is None:
                raise UploadError(f"photo {upload_id!r} is not on the server (it expired or was removed); "
                                  f"add it again", status=404)
            up.last_used = time.monotonic()
            return up

    def pin(self, ids: list[str]) -> list[Upload]:
        """Keep these photos until ``unpin``: a queued request still needs them."""
        with self._lock:
            missing = [i for i in ids if i not in self._uploads]
            if missing:
                raise UploadError(f"photo {missing[0]!r} is not on the server (it expired or was removed); "
                                  f"add it again", status=400)
            ups = [self._uploads[i] for i in ids]
            for up in ups:
                up.pins += 1
                up.last_used = time.monotonic()
            return ups

    def unpin(self, ids: list[str]) -> None:
        gone = []
        with self._lock:
            for i in ids:
                up = self._uploads.get(i)
                if up is not None:
                    up.pins = max(0, up.pins - 1)
                    up.last_used = time.monotonic()
                    if up.removed and not up.pins:
                        gone.append(self._uploads.pop(i))
        for up in gone:
            up.path.unlink(missing_ok=True)

    def remove(self, upload_id: str) -> bool:
        """Forget a photo. A pinned one is deleted when its request is done (by expiry), not under it."""
        with self._lock:
            up = self._uploads.get(upload_id)
            if up is None:
                return False
            if up.pins:
                up.removed = True  # a queued request still reads it; unpin deletes it
                return True
            del self._uploads[upload_id]
        up.path.unlink(missing_ok=True)
        return True

    def expire(self) -> int:
        """Delete unpinned photos unused for ``ttl_s``; returns how many."""
        now = time.monotonic()
        with self._lock:
            old = [u for u in self._uploads.values() if not u.pins and now - u.last_used > self.ttl_s]
            for u in old:
                del self._uploads[u.id]
        for u in old:
            u.path.unlink(missing_ok=True)
        return len(old)

    def __len__(self) -> int:
        with self._lock:
            return len(self._uploads)

    def close(self) -> None:
        """Delete every photo and the folder."""
        with self._lock:
            self._uploads.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
