import io
import json
import tarfile
from collections import Counter

import pytest

from suti.text_cache import read_captions


def write_shard(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def t2i_shard(path, start, n):
    """img2dataset layout: {key}.jpg / .txt / .json."""
    members = {}
    for i in range(start, start + n):
        key = f"{i:09d}"
        members[f"{key}.jpg"] = b"\xff\xd8not really a jpeg"
        members[f"{key}.txt"] = f"caption {i}".encode()
        members[f"{key}.json"] = json.dumps({"caption": f"caption {i}", "url": "http://x"}).encode()
    return write_shard(path, members)


def test_txt_skips_and_counts_blank_lines(tmp_path):
    (tmp_path / "c.txt").write_text("a red dog\n\n  a blue cat  \r\n\n", encoding="utf-8")
    report = Counter()
    assert read_captions(tmp_path / "c.txt", report) == ["a red dog", "a blue cat"]
    assert report == {"blank line in .txt": 2}


def test_jsonl_caption_or_text_field(tmp_path):
    (tmp_path / "c.jsonl").write_text(
        '{"caption": "a red dog", "text": "ignored"}\n{"text": "a blue cat"}\n"a plain string"\n'
        '{"url": "no caption"}\n\n', encoding="utf-8")
    report = Counter()
    assert read_captions(str(tmp_path / "c.jsonl"), report) == ["a red dog", "a blue cat", "a plain string"]
    assert report["record without a string 'caption'/'text' field (.jsonl)"] == 1


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"caption": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        read_captions(tmp_path / "bad.jsonl")


def test_json_list_and_dict(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"caption": "x"}, "y", {"text": "z"}]))
    (tmp_path / "b.json").write_text(json.dumps({"captions": ["p", "q"]}))
    (tmp_path / "c.json").write_text(json.dumps({"nope": 1}))
    assert read_captions([tmp_path / "a.json", tmp_path / "b.json"]) == ["x", "y", "z", "p", "q"]
    with pytest.raises(ValueError, match="c.json"):
        read_captions(tmp_path / "c.json")


def test_t2i_shards_brace_glob_and_folder(tmp_path):
    for s in range(3):
        t2i_shard(tmp_path / f"shard-{s:06d}.tar", s * 2, 2)
    expected = [f"caption {i}" for i in range(6)]
    assert read_captions(str(tmp_path / "shard-{000000..000002}.tar")) == expected
    assert read_captions(str(tmp_path / "shard-*.tar")) == expected
    assert read_captions(tmp_path) == expected
    assert read_captions(str(tmp_path / "shard-{000001..000002}.tar")) == expected[2:]


def test_icl_shard_reads_target_and_exemplar_captions(tmp_path):
    members = {}
    for n in range(2):
        key = f"cluster7_{n:04d}"
        members[f"{key}.target.jpg"] = b"img"
        members[f"{key}.target.txt"] = f"a sks dog in the snow {n}".encode()
        for k in range(3):
            members[f"{key}.ex{k}.jpg"] = b"img"
            members[f"{key}.ex{k}.txt"] = f"photo {k} of a dog".encode()
        members[f"{key}.json"] = json.dumps({"cluster_id": "cluster7", "k": 3}).encode()
    members["cluster7_0001.notes.txt"] = b"not a caption"  # last key: adjacent to its sample (not a duplicate)
    members["cluster7_0001.ex2.txt"] = b"\xff\xfe bad utf8"  # overrides the good ex2 caption above
    write_shard(tmp_path / "icl-000000.tar", members)
    report = Counter()
    caps = read_captions(tmp_path / "icl-000000.tar", report)
    assert caps[:4] == ["a sks dog in the snow 0", "photo 0 of a dog", "photo 1 of a dog", "photo 2 of a dog"]
    assert "a sks dog in the snow 1" in caps and "not a caption" not in caps
    assert report == {"other .txt member ignored (notes.txt)": 1, "non-UTF-8 caption member": 1}


def test_errors_name_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_captions(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="matched no files"):
        read_captions(str(tmp_path / "none-*.tar"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported caption source .*x.csv"):
        read_captions(tmp_path / "x.csv")
    (tmp_path / "broken.tar").write_bytes(b"this is not a tar file at all" * 20)
    with pytest.raises(ValueError, match="broken.tar: not a readable tar shard"):
        read_captions(tmp_path / "broken.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        read_captions(tmp_path / "empty")
