"""A corpus of damaged and odd web records, made on purpose: for tests, examples and checking a build's counts.

`write_damaged_corpus(folder)` writes
- ``odd.tar``: a valid img2dataset shard whose records are odd: JSON sidecars that are a list, a string, null or
  a number, or not JSON; captions and page URLs that are numbers, lists or objects; lone UTF-16 surrogates in
  a page URL, a caption, an image URL and a member name; keys repeated (adjacent and not); an image member
  over the size cap; and members that belong to no sample (a directory, a symlink, hidden files, a name
  without an extension);
- ``torn-*.tar[.gz]``: shards damaged the ways real copies are (cut at a member boundary, inside a member or
  inside a header, a bad header checksum, a zeroed block, a torn gzip stream, trailing garbage), plus empty,
  directory-only and not-a-tar shards;
- ``manifest.jsonl`` and ``images/``: manifest rows whose image_path is a FIFO, a folder, /dev/zero, a file over
  the size cap, a missing file, a file outside the image root (directly and through a symlink), and rows with
  wrongly typed fields or that are not JSON objects at all.

It returns what a correct build must count (see DamagedCorpus). Every record gets its own page URL, so none of
them can form a cluster: a build over this corpus mixed with a good one must keep exactly the good clusters.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from retrieval import testing as tarfaults

from .testing import jpeg_bytes, random_image

MAX_FILE_BYTES = 1_000_000  # the size cap the corpus is meant to be built with (decode.max_file_bytes)
TORN_SAMPLES = 6            # samples per damaged shard (3 members each)


@dataclass
class DamagedCorpus:
    webdataset: list[str]                 # shard paths (odd.tar first, then the damaged ones)
    manifest: str                         # the jsonl manifest
    image_root: str                       # where the manifest's relative paths point; use it as decode.path_root
    records_written: int                  # samples and manifest lines written, duplicates included
    unseen: int                           # samples past a tear: no reader can see them (their shard is counted)
    damaged_shards: dict[str, str] = field(default_factory=dict)   # path -> read error reason it must get
    empty_shards: list[str] = field(default_factory=list)


def _image(seed: str) -> bytes:
    return jpeg_bytes(random_image(seed.encode("utf-8", "surrogateescape").hex(), (96, 96)))


def _sample(key: str, page: str | None, caption="a photo", meta: dict | None = None, txt: bool = True,
            json_bytes: bytes | None = None) -> tuple[str, dict]:
    members = {"jpg": _image(key)}
    if txt:
        members["txt"] = caption.encode()
    if json_bytes is None:
        json_bytes = json.dumps({"page_url": page, "url": f"https://cdn.example.org/{key}.jpg", "caption": caption,
                                 **(meta or {})}).encode()
    members["json"] = json_bytes
    return key, members


def _odd_shard(path: Path) -> int:
    page = "https://odd.example.org/p/{}".format
    samples = []
    for i, raw in enumerate([b"[1, 2]", b'"just a string"', b"null", b"5", b"{oops", b"\xff\xfe"] * 2):
        samples.append(_sample(f"json{i:02d}", None, json_bytes=raw))  # no usable sidecar: no page URL
    for i, caption in enumerate([7, ["a", "list"], {"a": 1}, 3.5] * 2):  # no .txt: the caption comes from JSON
        samples.append((f"cap{i:02d}", {"jpg": _image(f"cap{i}"), "json": json.dumps(
            {"page_url": page(f"cap{i}"), "caption": caption}).encode()}))
    for i, url in enumerate([12345, ["https://a.example.org/"], {"u": 1}] * 2):
        samples.append(_sample(f"url{i:02d}", url))
    for i in range(3):  # lone surrogates (a JSON "\ud83d" escape decodes to one) in each text field
        samples.append(_sample(f"sur-page{i}", page(f"sur{i}") + "\ud83d"))
        samples.append((f"sur-cap{i}", {"jpg": _image(f"sur-cap{i}"), "json": json.dumps(
            {"page_url": page(f"surcap{i}"), "caption": f"emoji cut off \ud83d {i}"}).encode()}))
        samples.append(_sample(f"sur-url{i}", page(f"surl{i}"), meta={"url": f"https://cdn.example.org/\udc80{i}"}))
        samples.append(_sample(f"bad-name-\udcff{i}", page(f"name{i}")))  # a member name that is not UTF-8
    for i in range(3):
        samples.append(_sample(f"good{i}", page(f"good{i}"), caption=f"an ordinary photo {i}"))
    big_key, big = _sample("huge-member", page("huge"))
    big["jpg"] += bytes(MAX_FILE_BYTES)  # over the cap: skipped unread, so the sample has no image
    samples.append((big_key, big))
    samples.insert(3, samples[2])   # the same key twice in a row
    samples.append(samples[0])      # and a key that comes back at the end
    extra = [(tarfaults.dir_info("some/folder"), None), (tarfaults.symlink_info("link.jpg", "good0.jpg"), None),
             (tarfaults.file_info(".DS_Store", 4), b"junk"), (tarfaults.file_info("._good0.jpg", 4), b"junk"),
             (tarfaults.file_info("README", 4), b"junk")]
    path.write_bytes(tarfaults.tar_bytes(samples, extra))
    return len(samples)


def _torn_shards(folder: Path, corpus: DamagedCorpus) -> None:
    def shard(name: str) -> bytes:
        return tarfaults.tar_bytes([_sample(f"{name}-{i}", f"https://torn.example.org/{name}/{i}")
                                    for i in range(TORN_SAMPLES)])

    n = TORN_SAMPLES
    # name -> (damage, reason the shard must be listed under, samples no reader can see)
    cases = {
        "torn-at-header": (lambda d: tarfaults.cut_at_header(d, 9), "truncated", n - 3),
        "torn-in-member": (lambda d: tarfaults.cut_inside_member(d, 9), "truncated", n - 4),
        "torn-in-header": (lambda d: d[:tarfaults.member_offsets(d)[9][1] + 200], "truncated", n - 3),
        "bad-checksum": (lambda d: tarfaults.bad_checksum(d, 6), "corrupt", 0),
        "zeroed-block": (lambda d: tarfaults.zeroed_header(d, 6), "corrupt", 0),
        "trailing-garbage": (lambda d: d.rstrip(b"\0") + b"\x17garbage" * 200, "corrupt", 0),
    }
    for name, (damage, reason, unseen) in cases.items():
        path = folder / f"{name}.tar"
        path.write_bytes(damage(shard(name)))
        corpus.webdataset.append(str(path))
        corpus.damaged_shards[str(path)] = reason
        corpus.records_written += n
        corpus.unseen += unseen
    for name, cut, unseen in (("torn-gzip-between", lambda d: tarfaults.member_offsets(d)[9][1], n - 3),
                              ("torn-gzip-inside", lambda d: tarfaults.member_offsets(d)[9][2] + 100, n - 4)):
        data = shard(name)
        path = folder / f"{name}.tar.gz"
        path.write_bytes(tarfaults.torn_gzip(data, cut(data)))
        corpus.webdataset.append(str(path))
        corpus.damaged_shards[str(path)] = "truncated"
        corpus.records_written += n
        corpus.unseen += unseen
    for name, data in (("empty", b""), ("end-marker-only", bytes(1024)),
                       ("directories-only", tarfaults.tar_bytes([], [(tarfaults.dir_info("a"), None),
                                                                     (tarfaults.dir_info("a/b"), None)]))):
        path = folder / f"{name}.tar"
        path.write_bytes(data)
        corpus.webdataset.append(str(path))
        corpus.empty_shards.append(str(path))
    path = folder / "not-a-tar.tar"
    path.write_bytes(b"<html>404 not found</html>\n" * 40)
    corpus.webdataset.append(str(path))
    corpus.damaged_shards[str(path)] = "unreadable"


def _manifest(folder: Path) -> tuple[Path, Path, int]:
    root = folder / "images"
    root.mkdir()
    (root / "good.jpg").write_bytes(_image("manifest-good"))
    (root / "sub").mkdir()
    os.mkfifo(root / "pipe.jpg")
    (root / "huge.jpg").write_bytes(_image("huge") + bytes(MAX_FILE_BYTES))  # a JPEG with a long tail
    (folder / "outside.jpg").write_bytes(_image("outside"))
    (root / "escape.jpg").symlink_to(folder / "outside.jpg")
    (root / "zero.jpg").symlink_to("/dev/zero")
    page = "https://manifest.example.org/{}".format
    rows = [{"page_url": page("good"), "image_path": "good.jpg", "text": "fine"},
            {"page_url": page("fifo"), "image_path": "pipe.jpg", "text": "a FIFO would block forever"},
            {"page_url": page("dir"), "image_path": "sub", "text": "a folder"},
            {"page_url": page("devzero"), "image_path": "/dev/zero", "text": "never ends"},
            {"page_url": page("devzero-link"), "image_path": "zero.jpg", "text": "never ends, via a link"},
            {"page_url": page("huge"), "image_path": "huge.jpg", "text": "over the size cap"},
            {"page_url": page("missing"), "image_path": "missing.jpg", "text": "gone"},
            {"page_url": page("outside"), "image_path": "../outside.jpg", "text": "outside the root"},
            {"page_url": page("escape"), "image_path": "escape.jpg", "text": "outside through a link"},
            {"page_url": page("text"), "image_path": "good.jpg", "text": 42},
            {"page_url": ["https://a.example.org/"], "image_path": "good.jpg", "text": "list URL"},
            {"page_url": page("bytes"), "image_bytes": 17, "text": "bytes that are a number"},
            {"page_url": page("path"), "image_path": 17, "text": "a path that is a number"},
            {"page_url": page("surrogate") + "\ud83d", "image_path": "good.jpg", "text": "cut emoji \ud83d"},
            {"page_url": page("surrogate-path"), "image_path": "cut \ud83d.jpg", "text": "a path no file system takes"}]
    lines = [json.dumps(r) for r in rows] + ["[1, 2, 3]", '"a string"', "null", "{not json"]
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, root, len(lines)


def write_damaged_corpus(folder: str | os.PathLike) -> DamagedCorpus:
    """Writes the corpus under `folder` (see the module docstring) and returns what a build must count."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    odd = folder / "odd.tar"
    corpus = DamagedCorpus(webdataset=[str(odd)], manifest="", image_root="", records_written=_odd_shard(odd),
                           unseen=0)
    _torn_shards(folder, corpus)
    manifest, root, n_lines = _manifest(folder)
    corpus.manifest, corpus.image_root = str(manifest), str(root)
    corpus.records_written += n_lines
    return corpus
