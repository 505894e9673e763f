"""Retrieval reliability: bad arguments, damaged files and offline model tags end in one clear error."""

import numpy as np
import pytest

from retrieval import CorruptDatabaseError, Embedder, PairsDatabase
from retrieval.cli import main as cli_main
from retrieval.errors import ModelLoadError
from retrieval_testdata import img2dataset_sample, write_shard


@pytest.fixture(scope="module")
def db_folder(tmp_path_factory, tiny_embedder):
    root = tmp_path_factory.mktemp("reliability")
    write_shard(root / "00000.tar", [img2dataset_sample(f"{i:04d}", i, f"caption {i}") for i in range(6)])
    PairsDatabase.build(root / "db", tiny_embedder, shards=[root / "00000.tar"], progress=False)
    return root / "db"


@pytest.mark.parametrize("k", [2.5, 0, -1, "3", True, None])
def test_k_must_be_a_whole_number_of_at_least_one(db_folder, tiny_embedder, k):
    db = PairsDatabase.open(db_folder, tiny_embedder)
    with pytest.raises(ValueError, match=r"k must be a whole number >= 1"):
        db.search_text("caption 1", k=k)
    with pytest.raises(ValueError, match=r"k must be a whole number >= 1"):
        db.search_vector(db.embedding(0)[0], k=k)
    assert len(db.search_text("caption 1", k=np.int64(2))) == 2  # numpy integers are whole numbers


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_an_empty_query_text_is_an_error(db_folder, tiny_embedder, text, capsys):
    db = PairsDatabase.open(db_folder, tiny_embedder)
    with pytest.raises(ValueError, match="query text must be a non-empty string"):
        db.search_text(text)
    with pytest.raises(ValueError, match="query text must be a non-empty string"):
        db.search(text)
    assert cli_main(["index", "search", str(db_folder), "--text", text]) == 1
    assert "query text must be a non-empty string" in capsys.readouterr().err


def test_a_truncated_parquet_part_is_a_corrupt_database(db_folder, tmp_path, tiny_embedder):
    import shutil

    folder = tmp_path / "db"
    shutil.copytree(db_folder, folder)
    part = folder / "parts" / "part-000000.parquet"
    part.write_bytes(part.read_bytes()[:-40])  # cut into the footer
    with pytest.raises(CorruptDatabaseError, match=r"part-000000.parquet is unreadable"):
        PairsDatabase.open(folder, tiny_embedder)


def test_cli_repair_rebuilds_a_damaged_index(db_folder, tmp_path, capsys):
    import shutil

    folder = tmp_path / "db"
    shutil.copytree(db_folder, folder)
    assert cli_main(["index", "repair", str(folder)]) == 0
    assert "nothing to repair" in capsys.readouterr().out
    index_file = folder / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[:100])
    assert cli_main(["index", "search", str(folder), "--text", "caption 2"]) == 1
    assert f"suti index repair {folder}" in capsys.readouterr().err  # the error says how to fix it
    assert cli_main(["index", "repair", str(folder), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "index rebuilt" in captured.out and "damaged index" in captured.err
    assert cli_main(["index", "search", str(folder), "--text", "caption 2", "-k", "2", "--json"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    (folder / "parts" / "part-000000.npy").write_bytes(b"not numpy")  # a damaged part cannot be rebuilt
    assert cli_main(["index", "repair", str(folder)]) == 1
    assert "part-000000.npy is unreadable" in capsys.readouterr().err


def test_an_unavailable_pretrained_tag_is_one_clear_error_with_the_offline_hint(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):  # what open_clip raises offline: a chain of wrapped errors
        try:
            try:
                raise OSError("[Errno -2] Name or service not known")
            except OSError as e:
                raise FileNotFoundError("Failed to download file (open_clip_pytorch_model.bin)") from e
        except FileNotFoundError as e:
            raise RuntimeError("Failed to download weights for tag 'laion2b_s34b_b79k'") from e

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(ModelLoadError) as info:
        Embedder.from_pretrained("ViT-B-32", "laion2b_s34b_b79k")
    message = str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chain of tracebacks
    assert "'ViT-B-32'" in message and "could not be downloaded" in message
    assert "Name or service not known" in message  # the root cause, in one line
    assert "local-dir:FOLDER" in message and "/path/to/weights" in message


def test_cli_reports_an_unavailable_model_in_one_line(monkeypatch, tmp_path, capsys):
    import open_clip

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai'")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    code = cli_main(["index", "build", str(tmp_path / "db"), "--folder", str(tmp_path), "--model", "ViT-B-32",
                     "--pretrained", "openai", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: cannot load open_clip model 'ViT-B-32'") and "Traceback" not in err
    assert err.count("\n") == 1  # one line
