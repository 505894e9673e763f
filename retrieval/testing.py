"""Damaged webdataset shards, made on purpose: for tests and for checking a reader against real-world faults.

Each function returns the bytes of a tar; ``samples`` is a list of (key, {ext: bytes}) in order.
"""
from __future__ import annotations

import io
import tarfile
import zlib

BLOCK = tarfile.BLOCKSIZE


def tar_bytes(samples, extra_members=()) -> bytes:
    """A well-formed tar of ``samples``; ``extra_members`` are (TarInfo, bytes | None) added first."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in extra_members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def member_offsets(data: bytes) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of each member of a well-formed tar."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar.getmembers()]


def cut_at_header(data: bytes, member_index: int) -> bytes:
    """The tar cut exactly where member ``member_index``'s header starts (a torn copy at a member boundary)."""
    return data[: member_offsets(data)[member_index][1]]


def cut_inside_member(data: bytes, member_index: int) -> bytes:
    """The tar cut halfway through member ``member_index``'s data."""
    name, _, start = member_offsets(data)[member_index]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        size = tar.getmember(name).size
    return data[: start + max(1, size // 2)]


def bad_checksum(data: bytes, member_index: int) -> bytes:
    """Member ``member_index``'s header with one byte of its name changed (its checksum no longer matches)."""
    out = bytearray(data)
    at = member_offsets(data)[member_index][1]
    out[at] = (out[at] + 1) % 256 or 1
    return bytes(out)


def zeroed_header(data: bytes, member_index: int) -> bytes:
    """Member ``member_index``'s header block overwritten with zeros (a zeroed block mid-shard)."""
    out = bytearray(data)
    at = member_offsets(data)[member_index][1]
    out[at:at + BLOCK] = bytes(BLOCK)
    return bytes(out)


def torn_gzip(data: bytes, at: int) -> bytes:
    """The tar gzip-compressed, with the stream torn off right after its first ``at`` bytes (no more data, no
    trailer): a copy interrupted mid-write. Reading it back yields exactly ``data[:at]`` and then EOFError."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    return packer.compress(data[:at]) + packer.flush(zlib.Z_SYNC_FLUSH)


def dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def symlink_info(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def file_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info
