"""PairsDatabase: build from a real webdataset shard and a folder, reopen, search, read exemplars."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from retrieval import (CorruptDatabaseError, CorruptIndexError, DimensionMismatchError, Embedder,
                       EmptyIndexError, ImageReadError, PairsDatabase)
from retrieval.cli import add_subparsers, main as cli_main
from retrieval_testdata import TINY_CLIP_CFG, img2dataset_sample, jpeg_bytes, picture, write_shard

N_GOOD = 12


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    samples = [img2dataset_sample(f"{i:09d}", i, f"caption number {i}") for i in range(N_GOOD)]
    truncated = jpeg_bytes(picture(99, size=(200, 200)))
    samples.insert(3, ("corrupt01", {"jpg": truncated[: len(truncated) // 3], "txt": b"broken jpeg"}))
    samples.insert(7, ("noimage01", {"txt": b"caption without image", "json": b"{}"}))
    samples.append(("badjson01", {"jpg": jpeg_bytes(picture(50)), "txt": b"odd metadata", "json": b"{oops"}))
    path = folder / "00000.tar"
    write_shard(path, samples)
    return path


@pytest.fixture(scope="module")
def built_db(tmp_path_factory, shard, tiny_embedder):
    folder = tmp_path_factory.mktemp("db") / "pairs"
    db, report = PairsDatabase.build(folder, tiny_embedder, shards=[shard], batch_size=4)
    return folder, db, report


def test_build_reports_skipped_keys_with_reasons(built_db):
    _, db, report = built_db
    assert report.added == len(db) == N_GOOD + 1
    reasons = {s["key"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"corrupt01", "noimage01"}
    assert "truncated" in reasons["corrupt01"] or "OSError" in reasons["corrupt01"]
    assert "no image member" in reasons["noimage01"]
    assert [w["key"] for w in report.warnings] == ["badjson01"]
    assert {s["key"] for s in db.skipped} == {"corrupt01", "noimage01"}  # kept in database.json
    assert "skipped corrupt01" in report.summary()


def test_records_carry_metadata_and_location(built_db, shard):
    _, db, _ = built_db
    rec = db.find("000000004")
    assert rec["caption"] == "caption number 4"
    assert rec["url"] == "https://example.com/img/000000004.jpg"
    assert rec["page_url"] == "https://example.com/page/1"
    assert rec["meta"]["status"] == "success"
    assert rec["kind"] == "tar" and rec["path"] == str(shard.resolve()) and rec["member"] == "000000004.jpg"
    assert (rec["width"], rec["height"]) == (96, 72)
    assert db.find("corrupt01") is None


def test_load_image_returns_the_exemplar_pixels(built_db):
    _, db, _ = built_db
    rec = db.find("000000005")
    expected = np.asarray(Image.open(io.BytesIO(jpeg_bytes(picture(5)))).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(db.load_image(rec)), expected)
    np.testing.assert_array_equal(np.asarray(db.load_image(rec["id"])), expected)
    with pytest.raises(ImageReadError, match="nowhere.tar"):
        db.load_image(dict(rec, path="/nowhere.tar"))


def test_search_by_text_image_and_vector(built_db, tiny_embedder):
    _, db, _ = built_db
    target = db.find("000000008")
    by_image = db.search_image(db.load_image(target), k=3)
    assert by_image[0]["key"] == "000000008" and by_image[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [r["score"] for r in by_image] == sorted((r["score"] for r in by_image), reverse=True)
    by_vector = db.search_vector(db.embedding(target["id"])[0], k=5)
    assert by_vector[0]["id"] == target["id"] and len(by_vector) == 5
    text = "caption number 8"
    by_text = db.search_text(text, k=len(db))
    expected = tiny_embedder.embed_texts([text])[0] @ db.embeddings.T
    assert [r["id"] for r in by_text] == list(np.argsort(-expected, kind="stable"))
    assert db.search(text, k=2)[0]["id"] == by_text[0]["id"]
    assert len(db.search_vectors(db.embedding([0, 1]), k=2)) == 2
    assert len(db.search_text("x", k=100)) == len(db)  # k larger than the database


def test_reopen_without_reembedding(built_db, tiny_clip_dir):
    folder, db, _ = built_db
    before = db.embeddings.copy()
    reopened = PairsDatabase.open(folder)  # embedder reloaded lazily from the stored local-dir spec
    assert len(reopened) == len(db) and reopened.index.mmapped
    np.testing.assert_array_equal(reopened.embeddings, before)
    assert reopened.search_vector(before[2], k=1)[0]["id"] == 2
    assert reopened.search_text("caption number 3", k=1)[0]["id"] == db.search_text("caption number 3", k=1)[0]["id"]
    assert reopened.embedder.spec["name"] == f"local-dir:{tiny_clip_dir.resolve()}"


def test_resume_skips_indexed_shards_and_duplicate_keys(tmp_path, shard, tiny_embedder):
    db, _ = PairsDatabase.build(tmp_path / "db", tiny_embedder, shards=[shard])
    again = db.add_shards([shard])
    assert again.added == 0 and again.sources_already_indexed == [str(shard.resolve())]
    other = tmp_path / "00001.tar"
    write_shard(other, [img2dataset_sample("000000001", 1, "dup"), img2dataset_sample("new01", 77, "fresh")])
    report = db.add_shards(str(tmp_path / "0000{1..1}.tar"))
    assert report.added == 1 and report.skipped[0]["key"] == "000000001"
    assert "duplicate key" in report.skipped[0]["reason"]
    assert len(PairsDatabase.open(tmp_path / "db", tiny_embedder)) == N_GOOD + 2


def test_folder_source_and_incremental_add(tmp_path, tiny_embedder):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(5):
        picture(i + 200).save(images / f"img{i}.png")
        (images / f"img{i}.txt").write_text(f"folder caption {i}")
    picture(300).convert("RGBA").save(images / "sub" / "alpha.png")
    (images / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    db, report = PairsDatabase.build(tmp_path / "db", tiny_embedder, image_folder=images)
    assert report.added == 6 and [s["key"] for s in report.skipped] == ["sub/broken"]
    rec = db.find("img3")
    assert rec["caption"] == "folder caption 3" and rec["kind"] == "file"
    assert db.load_image(rec).size == (96, 72)
    assert db.find("sub/alpha")["caption"] == ""
    picture(400).save(images / "img9.jpg")
    more = db.add_folder(images)
    assert more.added == 1 and more.already_present == 6 and len(db) == 7
    assert db.search_image(images / "img9.jpg", k=1)[0]["key"] == "img9"


def test_index_is_replanned_as_the_database_grows(tmp_path):
    rng = np.random.default_rng(0)
    db = PairsDatabase.create(tmp_path / "vec", None, dim=16, memory_budget="1GB")

    def records(start, n):
        return [{"key": f"k{i}", "path": f"/data/{i}.jpg", "caption": f"c{i}"} for i in range(start, start + n)]

    ids = db.add_embeddings(rng.standard_normal((500, 16)), records(0, 500))
    assert ids.tolist() == list(range(500)) and db.index.key == "Flat"
    db.add_embeddings(rng.standard_normal((11_000, 16)), records(500, 11_000))
    assert db.index.key.startswith("HNSW") and len(db.index) == 11_500  # doubled and crossed 10k: rebuilt
    reopened = PairsDatabase.open(tmp_path / "vec")
    assert reopened.index.key == db.index.key and reopened.get(11_499)["caption"] == "c11499"
    with pytest.raises(ValueError, match="already in the database"):
        db.add_embeddings(rng.standard_normal((1, 16)), records(0, 1))


def test_near_duplicates(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((200, 16)).astype(np.float32)
    vectors = np.concatenate([base, base[[3, 50]] + 0.001])
    db = PairsDatabase.create(tmp_path / "vec", None, dim=16)
    db.add_embeddings(vectors, [{"key": str(i), "path": f"{i}.jpg"} for i in range(len(vectors))])
    pairs = db.near_duplicates(0.999)
    assert [(a, b) for a, b, _ in pairs] == [(3, 200), (50, 201)]


def test_bad_input_errors(tmp_path, built_db, tiny_embedder, tiny_clip_dir):
    folder, db, _ = built_db
    empty = PairsDatabase.create(tmp_path / "empty", tiny_embedder)
    with pytest.raises(EmptyIndexError, match="empty"):
        empty.search_text("anything")
    with pytest.raises(EmptyIndexError):
        PairsDatabase.open(tmp_path / "empty").search_vector(np.ones(tiny_embedder.dim))
    with pytest.raises(DimensionMismatchError):
        db.search_vector(np.ones(tiny_embedder.dim + 1))
    with pytest.raises(Exception, match="NaN"):
        db.search_vector(np.full(tiny_embedder.dim, np.nan))
    other = Embedder.from_config(dict(TINY_CLIP_CFG, embed_dim=24), name="tiny-clip-24")
    with pytest.raises(DimensionMismatchError, match="24"):
        PairsDatabase.open(folder, other)
    with pytest.raises(FileExistsError):
        PairsDatabase.create(folder, tiny_embedder)
    with pytest.raises(FileNotFoundError):
        PairsDatabase.open(tmp_path / "nothing")


def test_corrupt_files_in_a_database(tmp_path, shard, tiny_embedder):
    folder = tmp_path / "db"
    PairsDatabase.build(folder, tiny_embedder, shards=[shard])
    index_file = folder / "index.faiss"
    raw = index_file.read_bytes()
    index_file.write_bytes(raw[:100])
    with pytest.raises(CorruptIndexError, match="repair=True"):
        PairsDatabase.open(folder, tiny_embedder)
    repaired = PairsDatabase.open(folder, tiny_embedder, repair=True)
    assert len(repaired.index) == N_GOOD + 1
    assert PairsDatabase.open(folder, tiny_embedder).search_text("caption", k=1)
    np.save(folder / "parts" / "part-000000.npy", np.zeros((3, tiny_embedder.dim), np.float32))
    with pytest.raises(CorruptDatabaseError, match="shape"):
        PairsDatabase.open(folder, tiny_embedder)
    (folder / "database.json").write_text("{")
    with pytest.raises(CorruptDatabaseError, match="not valid JSON"):
        PairsDatabase.open(folder, tiny_embedder)


def test_interrupted_build_catches_up_the_index(tmp_path, shard, tiny_embedder):
    folder = tmp_path / "db"
    db, _ = PairsDatabase.build(folder, tiny_embedder, shards=[shard])
    state = json.loads((folder / "database.json").read_text())
    second = tmp_path / "00001.tar"
    write_shard(second, [img2dataset_sample(f"late{i}", 500 + i, f"late {i}") for i in range(3)])
    # Simulate a crash after the part was written but before the index was saved.
    saved_index = (folder / "index.faiss").read_bytes(), (folder / "index.faiss.json").read_text()
    db.add_shards([second])
    (folder / "index.faiss").write_bytes(saved_index[0])
    (folder / "index.faiss.json").write_text(saved_index[1])
    reopened = PairsDatabase.open(folder, tiny_embedder)
    assert len(reopened.index) == len(reopened) == state["count"] + 3
    assert reopened.search_image(reopened.load_image(reopened.find("late1")), k=1)[0]["key"] == "late1"


def test_cli_build_and_search(tmp_path, shard, tiny_clip_dir, capsys):
    import argparse

    out = tmp_path / "clidb"
    report_file = tmp_path / "report.json"
    code = cli_main(["index", "build", str(out), "--shards", str(shard), "--model", f"local-dir:{tiny_clip_dir}",
                     "--quiet", "--report", str(report_file)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipped corrupt01" in printed and "added 13" in printed
    report = json.loads(report_file.read_text())
    assert report["records"] == N_GOOD + 1 and {s["key"] for s in report["skipped"]} == {"corrupt01", "noimage01"}
    assert cli_main(["index", "search", str(out), "--text", "caption number 2", "-k", "3", "--json"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 3 and all("score" in l and "key" in l for l in lines)
    image = tmp_path / "q.jpg"
    image.write_bytes(jpeg_bytes(picture(6)))
    assert cli_main(["index", "search", str(out), "--image", str(image), "-k", "1"]) == 0
    assert "000000006" in capsys.readouterr().out
    vec = tmp_path / "v.npy"
    np.save(vec, PairsDatabase.open(out).embedding(0)[0])
    assert cli_main(["index", "search", str(out), "--vector", str(vec), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == 0
    assert cli_main(["index", "search", str(tmp_path / "none"), "--text", "x"]) == 1
    assert "error:" in capsys.readouterr().err
    # The lead's `suti` parser only has to call add_subparsers.
    parser = argparse.ArgumentParser(prog="suti")
    add_subparsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["index", "search", str(out), "--text", "hi"])
    assert args.func.__name__ == "run_search" and args.k == 10
