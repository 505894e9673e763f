"""Stage 9b: write ICL webdataset shards (icl-%06d.tar) byte-for-byte reproducibly, and read them back."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterator

from retrieval.atomic import atomic_path
from retrieval.shards import iter_tar_samples

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
    """Atomic (retrieval.atomic). Same samples in -> same bytes out (fixed mtime/owner, GNU tar format)."""
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for s in samples:
                for name, data in sample_members(s):
                    _add(tar, name, data)
    return Path(path).stat().st_size


def read_icl_shard(path: str | Path) -> Iterator[dict]:
    """Yields {"__key__", "json": dict, "target.jpg": bytes, "target.txt": str, "ex0.jpg": ..., ...}.
    Raises ValueError naming the shard at the first problem the tar reader reports (a shard this module
    wrote has none)."""
    def fail(problem):
        raise ValueError(f"ICL shard {problem}")

    for sample in iter_tar_samples(path, fail):
        out = {"__key__": sample.key}
        for field, data in sample.members.items():
            if field == "json":
                out[field] = json.loads(data)
            elif field.endswith(".txt"):
                out[field] = data.decode("utf-8")
            else:
                out[field] = data
        yield out
