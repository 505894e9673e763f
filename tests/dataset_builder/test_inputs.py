import base64
import gzip
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
    assert counts["read.errors.tar_truncated"] == 1 and counts["read.dropped.tar_truncated"] == 1


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


# --- truncated and corrupt files: counted with the file named, never fatal ---------------------------------------

def _read(spec):
    counts, errors = Counts(), []
    recs = [r for u in expand_inputs([spec]) for r in read_unit(u, counts, errors)]
    return recs, counts, errors


def _manifest_rows(n):
    img = jpeg_bytes(subject_image("quix", 0))
    return [{"page_url": f"https://e.com/p{i // 5}", "image_url": f"u{i}", "text": f"quix {i}", "image_bytes": img}
            for i in range(n)]


def test_truncated_jsonl_gz_keeps_what_was_read_and_names_the_file(tmp_path, capsys):
    rows = [dict(r, image_bytes=base64.b64encode(r["image_bytes"]).decode()) for r in _manifest_rows(60)]
    data = gzip.compress("\n".join(json.dumps(r) for r in rows).encode())
    path = tmp_path / "m.jsonl.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    recs, counts, errors = _read({"type": "jsonl", "path": str(path)})
    assert 0 < len(recs) < 60 and counts["read.errors.jsonl_unreadable"] == 1
    assert errors == [{"file": str(path), "unit": 0, "reason": "jsonl_unreadable", "error": errors[0]["error"]}]
    assert errors[0]["error"].startswith("EOFError")
    assert str(path) in capsys.readouterr().err


def _corrupt_row_group(src, dst, group: int):
    md = pq.ParquetFile(src).metadata
    col = md.row_group(group).column(md.schema.names.index("image_bytes"))
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    data = bytearray(src.read_bytes())
    data[start:start + 16] = b"\xff" * 16  # the page header: the row group cannot be decoded, the footer is fine
    dst.write_bytes(bytes(data))


def test_parquet_with_a_corrupt_row_group_reads_the_others(tmp_path):
    rows = _manifest_rows(30)
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), tmp_path / "ok.parquet", row_group_size=10)
    _corrupt_row_group(tmp_path / "ok.parquet", tmp_path / "bad.parquet", 1)
    recs, counts, errors = _read({"type": "parquet", "path": str(tmp_path / "bad.parquet")})
    assert [r.image_url for r in recs] == [f"u{i}" for i in list(range(10)) + list(range(20, 30))]
    assert recs[10].key.endswith(":000000020")  # row numbers from the footer: keys do not shift
    assert counts["read.errors.parquet_unreadable"] == 1 and counts["read.errors.parquet_rows_unread"] == 10
    assert errors[0]["file"] == str(tmp_path / "bad.parquet") and errors[0]["error"].startswith("row group 1: ")


def test_parquet_cut_short_is_counted_not_fatal(tmp_path):
    rows = _manifest_rows(10)
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), tmp_path / "ok.parquet")
    data = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    recs, counts, errors = _read({"type": "parquet", "path": str(tmp_path / "cut.parquet")})
    assert recs == [] and counts["read.errors.parquet_unreadable"] == 1
    assert errors[0]["file"] == str(tmp_path / "cut.parquet")


def test_truncated_wit_tsv_gz_is_counted(tmp_path):
    header = "page_url\timage_url\tcaption_reference_description\timage_path\n"
    body = "".join(f"https://en.wikipedia.org/wiki/P{i}\thttps://upload/{i}.jpg\tcaption {i}\t{i}.jpg\n"
                   for i in range(2000))
    data = gzip.compress((header + body).encode())
    path = tmp_path / "wit.tsv.gz"
    path.write_bytes(data[: len(data) // 2])
    recs, counts, errors = _read({"type": "wit", "path": str(path)})
    assert 0 < len(recs) < 2000 and counts["read.errors.wit_unreadable"] == 1
    assert errors[0]["file"] == str(path) and errors[0]["reason"] == "wit_unreadable"


def test_a_build_goes_on_past_a_truncated_file_and_lists_it_in_stats(planted, tmp_path):
    from db_helpers import planted_config

    from dataset_builder import build_dataset, config_from_dict
    gz = tmp_path / "extra.jsonl.gz"
    data = gzip.compress("".join(json.dumps({"page_url": f"https://e.com/{i}", "text": f"t{i}"}) + "\n"
                                 for i in range(2000)).encode())
    gz.write_bytes(data[: len(data) // 2])
    cfg = planted_config(planted["shards"], tmp_path / "out")
    cfg["inputs"].append({"type": "jsonl", "path": str(gz)})
    stats = build_dataset(config_from_dict(cfg))
    assert stats["counts"]["read"]["errors"] == {"jsonl_unreadable": 1}
    assert [(e["file"], e["reason"]) for e in stats["read_errors"]] == [(str(gz), "jsonl_unreadable")]
    assert stats["counts"]["write"]["samples"] > 0


# --- WIT quoting ---------------------------------------------------------------------------------------------------

def _wit_file(path, quoted_caption: str):
    img = base64.b64encode(jpeg_bytes(subject_image("quix", 4))).decode()
    header = ["page_url", "image_url", "caption_reference_description", "caption_alt_text_description", "b64_bytes"]
    rows = [["https://en.wikipedia.org/wiki/Teapot", "https://upload/a.jpg", quoted_caption, "alt a", img],
            ["https://en.wikipedia.org/wiki/Teapot", "https://upload/b.jpg", "plain caption", "alt b", img]]
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n", encoding="utf-8")


def test_wit_reads_quoted_fields_with_tabs_newlines_and_quotes(tmp_path):
    """WIT's TSVs are written with standard CSV quoting (as pandas writes them; the HF and TFDS loaders read
    them with csv's default/QUOTE_MINIMAL): a quoted field may hold a tab, a newline and doubled quotes."""
    _wit_file(tmp_path / "wit.tsv", '"A ""zorb"" teapot,\tleft side\nsecond line"')
    recs, counts, errors = _read({"type": "wit", "path": str(tmp_path / "wit.tsv")})
    assert [r.text for r in recs] == ['A "zorb" teapot,\tleft side\nsecond line', "plain caption"]
    assert [r.image_url for r in recs] == ["https://upload/a.jpg", "https://upload/b.jpg"]
    assert recs[0].image_bytes == recs[1].image_bytes and not errors


def test_wit_quoting_none_keeps_quotes_literal(tmp_path):
    _wit_file(tmp_path / "wit.tsv", '"quoted" caption')
    recs, _, _ = _read({"type": "wit", "path": str(tmp_path / "wit.tsv"), "quoting": "none"})
    assert recs[0].text == '"quoted" caption'
    with pytest.raises(InputError, match="quoting"):
        expand_inputs([{"type": "wit", "path": str(tmp_path / "wit.tsv"), "quoting": "excel"}])
