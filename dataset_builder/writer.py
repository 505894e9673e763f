"""Stage 9b: write ICL webdataset shards (icl-%06d.tar) byte-for-byte reproducibly, and read them back."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

from .records import ICLSample


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def sample_members(s: ICLSample) -> list[tuple[str, bytes]]:
    items = [(f"{s.key}.json", json.dumps(s.meta, sort_keys=True, ensure_ascii=False).encode("utf-8")),
             (f"{s.key}.target.jpg", s.target_image), (f"{s.key}.target.txt", s.target_text.encode("utf-8"))]
    for i, (img, txt) in enumerate(zip(s.exemplar_images, s.exemplar_texts)):
        items.append((f"{s.key}.ex{i}.jpg", img))
        items.append((f"{s.key}.ex{i}.txt", txt.encode("utf-8")))
    return items


def write_icl_shard(samples: list[ICLSample], path: str | Path) -> int:
    """Atomic (tmp + os.replace). Same samples in -> same bytes out (fixed mtime/owner, GNU tar format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for s in samples:
                for name, data in sample_members(s):
                    _add(tar, name, data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def read_icl_shard(path: str | Path) -> Iterator[dict]:
    """Yields {"__key__", "json": dict, "target.jpg": bytes, "target.txt": str, "ex0.jpg": ..., ...}."""
    current, sample = None, {}
    with tarfile.open(path, "r") as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, field = m.name.split(".", 1)
            if key != current and current is not None:
                yield sample
                sample = {}
            current = key
            sample["__key__"] = key
            data = tar.extractfile(m).read()
            if field == "json":
                sample[field] = json.loads(data)
            elif field.endswith(".txt"):
                sample[field] = data.decode("utf-8")
            else:
                sample[field] = data
    if current is not None:
        yield sample
