"""PairsDatabase: build from a real webdataset shard and a folder, reopen, search, read exemplars."""

import io
import json

import numpy as np
import pytest
import torch
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


# ------------------------------------------------------------- one model per database
def test_a_different_model_is_refused_naming_both(tmp_path, shard, tiny_embedder, tiny_clip_dir):
    import warnings

    from retrieval import EmbedderMismatchError

    folder = tmp_path / "db"
    PairsDatabase.build(folder, tiny_embedder, shards=[shard])
    torch.manual_seed(7)  # same architecture and dimension, other weights
    other_dir = Embedder.from_config(TINY_CLIP_CFG, name="tiny-clip-test").save_pretrained(tmp_path / "other")
    other = Embedder.from_pretrained(f"local-dir:{other_dir}")
    for attempt in (lambda: PairsDatabase.open(folder, other),
                    lambda: PairsDatabase.build(folder, other, shards=[shard]),
                    lambda: PairsDatabase.create(folder, other, exist_ok=True)):
        with pytest.raises(EmbedderMismatchError) as info:
            attempt()
        assert str(tiny_clip_dir.resolve()) in str(info.value) and str(other_dir.resolve()) in str(info.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        allowed = PairsDatabase.open(folder, other, allow_different_embedder=True)
    assert allowed.search_text("caption", k=1) and "not comparable" in str(caught[0].message)
    # The same weights loaded in another precision are the same model.
    assert len(PairsDatabase.open(folder, Embedder.from_pretrained(f"local-dir:{tiny_clip_dir}", dtype="bfloat16")))
    # A model folder whose weights were replaced after the build is caught on lazy reload too.
    state = json.loads((folder / "database.json").read_text())
    state["embedder"] = {"name": f"local-dir:{other_dir.resolve()}", "pretrained": None}
    (folder / "database.json").write_text(json.dumps(state))
    with pytest.raises(EmbedderMismatchError):
        PairsDatabase.open(folder).search_text("caption")
    assert cli_main(["index", "build", str(folder), "--shards", str(shard), "--model", f"local-dir:{other_dir}",
                     "--quiet"]) == 1


def test_config_built_models_are_fingerprinted_too(tmp_path, shard, tiny_embedder):
    from retrieval import EmbedderMismatchError

    db, _ = PairsDatabase.build(tmp_path / "db", tiny_embedder, shards=[shard])
    assert db._state["embedder_sha256"] == tiny_embedder.fingerprint
    torch.manual_seed(3)
    with pytest.raises(EmbedderMismatchError, match="tiny-clip-other"):
        PairsDatabase.open(tmp_path / "db", Embedder.from_config(TINY_CLIP_CFG, name="tiny-clip-other"))


# ------------------------------------------------------------------- keys per source
def _image_folder(root, seeds):
    root.mkdir(parents=True)
    for name, seed in seeds.items():
        picture(seed).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(f"{root.name} {name}")
    return root


def test_two_folders_with_the_same_file_names(tmp_path, tiny_embedder):
    a = _image_folder(tmp_path / "a", {"img0": 1, "img1": 2, "img2": 3})
    b = _image_folder(tmp_path / "b", {"img0": 11, "img1": 12, "img2": 13})
    db, first = PairsDatabase.build(tmp_path / "db", tiny_embedder, image_folder=a)
    clash = db.add_folder(b)
    # Not "already present": the clash is reported per image, naming the record holding the key.
    assert clash.added == 0 and clash.already_present == 0 and len(clash.skipped) == 3
    assert all("duplicate key" in s["reason"] and str(a.resolve()) in s["reason"] and "key_prefix" in s["reason"]
               for s in clash.skipped)
    merged = db.add_folder(b, key_prefix="b/")
    assert merged.added == 3 and len(db) == 6 and db.find("b/img1")["caption"] == "b img1"
    assert db.find("img1")["caption"] == "a img1"
    again_a, again_b = db.add_folder(a), db.add_folder(b, key_prefix="b/")  # idempotent, prefix or not
    assert (again_a.added, again_a.already_present, again_b.added, again_b.already_present) == (0, 3, 0, 3)
    assert db.add_folder(b).already_present == 3  # same files, whatever the prefix
    assert db.search_image(b / "img2.png", k=1)[0]["key"] == "b/img2"


def test_two_img2dataset_runs_merge_with_a_key_prefix(tmp_path, tiny_embedder):
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        write_shard(tmp_path / run / "00000.tar",
                    [img2dataset_sample(f"{i:09d}", i + (100 if run == "run2" else 0), f"{run} {i}") for i in range(3)])
    db, _ = PairsDatabase.build(tmp_path / "db", tiny_embedder, shards=tmp_path / "run1", key_prefix="run1/")
    report = db.add_shards(tmp_path / "run2", key_prefix="run2/")
    assert report.added == 3 and not report.skipped and len(db) == 6
    assert db.find("run2/000000001")["caption"] == "run2 1" and db.find("run1/000000001")["caption"] == "run1 1"
    assert db.add_shards(tmp_path / "run2", key_prefix="other/").sources_already_indexed  # resume by path


# ------------------------------------------------------------------ unreadable shards
def test_an_unreadable_shard_is_skipped_with_a_reason(tmp_path, shard, tiny_embedder):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "00000.tar").write_bytes(shard.read_bytes())
    (shards / "00001.tar").write_bytes(b"this is not a tar file" * 40)
    (shards / "00002.tar").write_bytes(b"")
    good = [img2dataset_sample(f"t{i}", 300 + i, f"tail {i}") for i in range(3)]
    write_shard(shards / "00003.tar", good)
    raw = (shards / "00003.tar").read_bytes()
    cut = raw.index(b"t1.jpg\0") + 512 + 100  # 100 bytes into t1's JPEG data (after its 512-byte header)
    (shards / "00003.tar").write_bytes(raw[:cut])
    db, report = PairsDatabase.build(tmp_path / "db", tiny_embedder, shards=shards)
    assert report.sources_done == 2 and report.added == N_GOOD + 1 + 1
    reasons = {s["source"].rsplit("/", 1)[-1]: s["reason"] for s in report.sources_skipped}
    assert reasons == {"00001.tar": "not a tar archive (invalid header in the first block)",
                       "00002.tar": "empty file (0 bytes)"}
    assert {s["source"] for s in db.skipped_sources} == {str(shards / "00001.tar"), str(shards / "00002.tar")}
    tail = {s["key"]: s["reason"] for s in report.skipped if s["source"].endswith("00003.tar")}
    assert list(tail) == ["t1"] and "truncated inside member t1.jpg" in tail["t1"] and f"byte {cut}" in tail["t1"]
    assert all("object at 0x" not in s["reason"] for s in report.skipped + report.sources_skipped)
    assert "skipped source" in report.summary()
    write_shard(shards / "00001.tar", [img2dataset_sample("fixed", 400, "fixed later")])
    assert db.add_shards(shards / "00001.tar").added == 1 and len(db.skipped_sources) == 1


def test_undecodable_image_reason_has_no_object_repr(tmp_path, tiny_embedder):
    write_shard(tmp_path / "x.tar", [("bad", {"jpg": b"\xff\xd8\xff garbage", "txt": b"x"}),
                                     img2dataset_sample("good", 5, "fine")])
    _, report = PairsDatabase.build(tmp_path / "db", tiny_embedder, shards=tmp_path / "x.tar")
    (reason,) = [s["reason"] for s in report.skipped]
    assert "UnidentifiedImageError" in reason and "0x" not in reason and "<" not in reason


def test_a_missing_index_sidecar_counts_as_corrupt(tmp_path, shard, tiny_embedder):
    folder = tmp_path / "db"
    PairsDatabase.build(folder, tiny_embedder, shards=[shard])
    (folder / "index.faiss.json").unlink()
    with pytest.raises(CorruptIndexError, match="sidecar .* is missing.*repair=True"):
        PairsDatabase.open(folder, tiny_embedder)
    assert len(PairsDatabase.open(folder, tiny_embedder, repair=True).index) == N_GOOD + 1
    assert (folder / "index.faiss.json").is_file()


# --------------------------------------------------------------------- progress bars
def test_progress_bars_by_default_in_the_cli_and_for_large_builds(tmp_path, shard, tiny_clip_dir, tiny_embedder,
                                                                   capsys):
    model = ["--model", f"local-dir:{tiny_clip_dir}"]
    assert cli_main(["index", "build", str(tmp_path / "a"), "--shards", str(shard), *model]) == 0
    assert "embedding 1 shard" in capsys.readouterr().err
    assert cli_main(["index", "build", str(tmp_path / "b"), "--shards", str(shard), *model, "--quiet"]) == 0
    assert "embedding" not in capsys.readouterr().err
    PairsDatabase.build(tmp_path / "c", tiny_embedder, shards=[shard])  # small: no bar unless asked
    assert "embedding" not in capsys.readouterr().err
    PairsDatabase.build(tmp_path / "d", tiny_embedder, shards=[shard], progress=True)
    assert "embedding 1 shard" in capsys.readouterr().err


# --------------------------------------------------------------- exact near-duplicates
def test_near_duplicates_are_exact_on_a_pq_index(tmp_path):
    import faiss

    from retrieval_testdata import clustered_vectors

    base = clustered_vectors(12_000, 32, n_clusters=150, spread=0.8, seed=0)
    rng = np.random.default_rng(1)
    originals = rng.choice(len(base), 40, replace=False)
    copies = base[originals] + 0.02 * rng.standard_normal((40, 32)).astype(np.float32) / np.sqrt(32)
    vectors = np.concatenate([base, copies])
    db = PairsDatabase.create(tmp_path / "pq", None, dim=32, memory_budget="500KB")
    db.add_embeddings(vectors, [{"key": str(i), "path": f"{i}.jpg"} for i in range(len(vectors))])
    assert db.index.family == "ivf_pq"
    unit = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    exact = faiss.IndexFlatIP(32)  # brute force: the ground truth
    exact.add(unit)
    lims, _, found = exact.range_search(unit, 0.995)
    expected = {(min(q, int(j)), max(q, int(j))) for q in range(len(unit)) for j in found[lims[q]:lims[q + 1]]
                if j != q}
    assert {(int(o), len(base) + j) for j, o in enumerate(originals)} <= expected
    pairs = db.near_duplicates(0.995)
    assert {(a, b) for a, b, _ in pairs} == expected
    for a, b, score in pairs:  # scores are the exact cosines, not PQ estimates
        assert score == pytest.approx(float(unit[a] @ unit[b]), abs=1e-5)


# ------------------------------------------------------------- growth, tuning, latency
def test_index_is_retuned_after_growth_and_the_recorded_recall_says_when(tmp_path):
    from retrieval_testdata import clustered_vectors

    vectors = clustered_vectors(21_000, 16, n_clusters=200, spread=1.0, seed=3)
    db = PairsDatabase.create(tmp_path / "grow", None, dim=16, memory_budget="1GB")

    def add(lo, hi):
        db.add_embeddings(vectors[lo:hi], [{"key": f"k{i}", "path": f"{i}.jpg"} for i in range(lo, hi)])

    add(0, 12_000)
    assert db.index.family == "hnsw" and db.index_info["tuned_at_count"] == 12_000
    add(12_000, 14_000)  # < 1.5x: rows added, tuning kept, and the record says it is from 12,000
    info = db.index_info
    assert (info["ntotal"], info["tuned_at_count"], info["count"]) == (14_000, 12_000, 14_000)
    assert db.index.tuning.ntotal == 12_000
    add(14_000, 21_000)  # >= 1.5x since the last tuning: same plan, so tuned again over all rows
    info = db.index_info
    assert info["tuned_at_count"] == 21_000 and db.index.tuning.ntotal == 21_000
    assert info["tuned_recall"] == round(db.index.tuning.recall, 4) and db.index.tuning.met
    reopened = PairsDatabase.open(tmp_path / "grow")
    assert reopened.index.tuning.ntotal == 21_000 and reopened.index_info["tuned_at_count"] == 21_000


def test_latency_target_is_a_setting_of_the_database(tmp_path, shard, tiny_clip_dir):
    db = PairsDatabase.create(tmp_path / "lat", None, dim=16, target_recall=None, target_latency_ms=1e6)
    rng = np.random.default_rng(0)
    db.add_embeddings(rng.standard_normal((12_000, 16)), [{"key": f"k{i}", "path": "x"} for i in range(12_000)])
    tuning = db.index.tuning
    assert tuning.met and tuning.value == tuning.sweep[-1]["value"]  # widest search within the latency
    assert PairsDatabase.open(tmp_path / "lat")._state["settings"]["target_latency_ms"] == 1e6
    with pytest.raises(ValueError, match="target_latency_ms"):
        PairsDatabase.create(tmp_path / "bad", None, dim=16, target_latency_ms=0)
    assert cli_main(["index", "build", str(tmp_path / "cli"), "--shards", str(shard), "--model",
                     f"local-dir:{tiny_clip_dir}", "--quiet", "--target-latency-ms", "5"]) == 0
    assert PairsDatabase.open(tmp_path / "cli")._state["settings"]["target_latency_ms"] == 5.0
