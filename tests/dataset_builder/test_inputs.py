import base64
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset_builder.counts import Counts
from dataset_builder.inputs import InputError, expand_inputs, read_unit
from dataset_builder.testing import jpeg_bytes, subject_image


def _records(spec):
    counts = Counts()
    return [r for u in expand_inputs([spec]) for r in read_unit(u, counts)], counts


def test_webdataset_reads_img2dataset_layout(planted):
    recs, _ = _records({"type": "webdataset", "paths": planted["shards"]})
    assert len(recs) == len(planted["rows"])
    got = sorted((r.page_url, r.image_url, r.text, r.image_bytes) for r in recs)
    want = sorted((r["page_url"], r["image_url"], r["text"], r["image"]) for r in planted["rows"])
    assert got == want


def test_webdataset_brace_pattern_and_truncated_shard(planted, tmp_path):
    folder = planted["shards"][0].rsplit("/", 1)[0]
    units = expand_inputs([{"type": "webdataset", "paths": folder + "/{00000..00002}.tar"}])
    assert [u.path.rsplit("/", 1)[-1] for u in units] == ["00000.tar", "00001.tar", "00002.tar"]
    data = open(planted["shards"][0], "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    recs, counts = _records({"type": "webdataset", "path": str(cut)})
    assert 0 < len(recs) < len(planted["rows"]) // 3 + 1
    assert counts["read.errors.tar_unreadable"] == 1


def test_parquet_manifest_with_bytes_and_paths(tmp_path):
    img = jpeg_bytes(subject_image("quix", 0))
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(img)
    table = pa.table({"page_url": ["https://e.com/p", "https://e.com/p", "https://e.com/q"],
                      "image_url": ["u1", None, "u3"], "text": ["one", "two", None],
                      "image_bytes": [img, None, None], "image_path": [None, "imgs/a.jpg", "/abs/missing.jpg"]})
    pq.write_table(table, tmp_path / "m.parquet")
    recs, _ = _records({"type": "parquet", "path": str(tmp_path / "m.parquet")})
    assert recs[0].image_bytes == img and recs[0].image_path is None
    assert recs[1].image_bytes is None and recs[1].image_path == str(tmp_path / "imgs" / "a.jpg")
    assert recs[1].image_url == recs[1].image_path  # no URL column value: the path stands in
    assert recs[2].text == "" and recs[2].image_path == "/abs/missing.jpg"


def test_parquet_hf_image_struct(tmp_path):
    img = jpeg_bytes(subject_image("quix", 1))
    table = pa.table({"page_url": ["https://e.com/p"], "image_url": ["u"], "text": ["t"],
                      "image": [{"bytes": img, "path": "x.jpg"}]})
    pq.write_table(table, tmp_path / "hf.parquet")
    recs, _ = _records({"type": "parquet", "path": str(tmp_path / "hf.parquet"), "image_bytes_col": "image"})
    assert recs[0].image_bytes == img


def test_jsonl_manifest_base64_and_bad_lines(tmp_path):
    img = jpeg_bytes(subject_image("quix", 2))
    lines = [json.dumps({"page_url": "https://e.com/p", "image_url": "u", "text": "t",
                         "image_bytes": base64.b64encode(img).decode()}), "{not json", "",
             json.dumps({"page_url": "https://e.com/p", "image_path": "x.jpg", "text": "u"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    recs, counts = _records({"type": "jsonl", "path": str(tmp_path / "m.jsonl")})
    assert len(recs) == 2 and recs[0].image_bytes == img
    assert recs[1].image_path == str(tmp_path / "x.jpg")
    assert counts["read.errors.bad_json_line"] == 1


def test_wit_tsv_columns(tmp_path):
    img = jpeg_bytes(subject_image("quix", 3))
    header = ["language", "page_url", "image_url", "page_title", "caption_reference_description",
              "caption_alt_text_description", "b64_bytes", "image_path"]
    rows = [["en", "https://en.wikipedia.org/wiki/Teapot", "https://upload/a.jpg", "Teapot", "A zorb teapot", "alt",
             base64.b64encode(img).decode(), ""],
            ["en", "https://en.wikipedia.org/wiki/Teapot", "https://upload/b.jpg", "Teapot", "", "alt only", "",
             "b.jpg"]]
    path = tmp_path / "wit.tsv"
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n")
    recs, _ = _records({"type": "wit", "path": str(path)})
    assert [r.text for r in recs] == ["A zorb teapot", "alt only"]
    assert recs[0].image_bytes == img and recs[1].image_path == str(tmp_path / "b.jpg")
    assert recs[0].page_url == "https://en.wikipedia.org/wiki/Teapot"


def test_wit_without_page_url_column_names_the_file(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match="bad.tsv"):
        _records({"type": "wit", "path": str(path)})


def test_unknown_type_and_missing_file_raise():
    with pytest.raises(InputError, match="unknown type"):
        expand_inputs([{"type": "csv", "path": "x"}])
    with pytest.raises(InputError, match="no files|not found"):
        expand_inputs([{"type": "webdataset", "paths": "/nonexistent/*.tar"}])
