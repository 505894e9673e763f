"""Embedder: a tiny open_clip built locally, saved and loaded back through local-dir:."""

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import DimensionMismatchError, Embedder, ImageReadError, InvalidVectorError
from retrieval_testdata import TINY_CLIP_CFG, jpeg_bytes, picture


def odd_images():
    deep = Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)
    return [
        picture(0),
        Image.new("RGBA", (300, 12), (10, 200, 30, 100)),
        Image.new("L", (1, 1), 200),
        Image.new("CMYK", (33, 65), (10, 20, 30, 40)),
        picture(1).convert("P"),
        deep,
        picture(2, size=(1500, 40)),
    ]


def test_embeddings_are_unit_norm_float32(tiny_embedder):
    images = tiny_embedder.embed_images(odd_images(), batch_size=3)
    texts = tiny_embedder.embed_texts(["a photo of a dog", "", "x" * 500], batch_size=2)
    for emb, n in ((images, 7), (texts, 3)):
        assert emb.shape == (n, tiny_embedder.dim) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert tiny_embedder.dim == TINY_CLIP_CFG["embed_dim"]


def test_batching_does_not_change_results(tiny_embedder):
    images = odd_images()
    a = tiny_embedder.embed_images(images, batch_size=1)
    b = tiny_embedder.embed_images(images, batch_size=64)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_paths_bytes_and_pil_agree(tiny_embedder, tmp_path):
    data = jpeg_bytes(picture(5))
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    by_path, by_bytes, by_pil = tiny_embedder.embed_images([path, data, Image.open(path)])
    np.testing.assert_allclose(by_path, by_bytes, atol=1e-6)
    np.testing.assert_allclose(by_path, by_pil, atol=1e-6)


def test_save_and_reload_gives_identical_embeddings(tiny_embedder, tmp_path):
    images, texts = odd_images()[:3], ["red circle", "blue square"]
    folder = tiny_embedder.save_pretrained(tmp_path / "copy")
    reloaded = Embedder.from_pretrained(f"local-dir:{folder}")
    assert reloaded.spec == {"name": f"local-dir:{folder.resolve()}", "pretrained": None}
    np.testing.assert_array_equal(reloaded.embed_images(images), tiny_embedder.embed_images(images))
    np.testing.assert_array_equal(reloaded.embed_texts(texts), tiny_embedder.embed_texts(texts))


def test_from_config_with_state_dict_reproduces_the_model(tiny_embedder):
    state = tiny_embedder.model.state_dict()
    clone = Embedder.from_config(TINY_CLIP_CFG, name="tiny-clip-test", state_dict=state)
    np.testing.assert_array_equal(clone.embed_texts(["hello"]), tiny_embedder.embed_texts(["hello"]))
    with pytest.raises(ValueError, match="already registered"):
        Embedder.from_config(dict(TINY_CLIP_CFG, embed_dim=16), name="tiny-clip-test")
    with pytest.raises(ValueError, match="lacks"):
        Embedder.from_config({"embed_dim": 8}, name="broken-cfg")


def test_unreadable_image_raises_or_is_skipped_with_its_key(tiny_embedder, tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(picture(7)))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageReadError) as info:
        tiny_embedder.embed_images([good, bad])
    assert info.value.path == str(bad)
    emb, kept, skipped = tiny_embedder.embed_images([good, bad, tmp_path / "missing.png", picture(8)],
                                                    on_error="skip")
    assert emb.shape == (2, tiny_embedder.dim) and kept.tolist() == [0, 3]
    assert [key for key, _ in skipped] == [str(bad), str(tmp_path / "missing.png")]
    assert "file not found" in skipped[1][1]
    _, _, named = tiny_embedder.embed_images([b"nope"], on_error="skip", keys=["sample-17"])
    assert named[0][0] == "sample-17"


def test_scores(tiny_embedder):
    img = tiny_embedder.embed_images([picture(1), picture(2)])
    txt = tiny_embedder.embed_texts(["one", "two"])
    scores = tiny_embedder.image_text_scores(img, txt)
    np.testing.assert_allclose(scores, (img * txt).sum(1), atol=1e-6)
    np.testing.assert_allclose(tiny_embedder.image_image_scores(img, img), 1.0, atol=1e-6)
    np.testing.assert_allclose(tiny_embedder.image_image_scores(img[0], 3 * img[0]), 1.0, atol=1e-6)
    with pytest.raises(DimensionMismatchError):
        tiny_embedder.image_text_scores(img, txt[:1])
    with pytest.raises(DimensionMismatchError):
        tiny_embedder.image_image_scores(img[:, :5], img[:, :5])
    with pytest.raises(InvalidVectorError):
        tiny_embedder.image_image_scores(np.full_like(img, np.nan), img)


def test_dtype_and_device_are_settable(tiny_clip_dir):
    fp32 = Embedder.from_pretrained(f"local-dir:{tiny_clip_dir}")
    bf16 = Embedder.from_pretrained(f"local-dir:{tiny_clip_dir}", dtype="bfloat16", device="cpu")
    assert bf16.dtype == torch.bfloat16 and next(bf16.model.parameters()).dtype == torch.bfloat16
    a, b = fp32.embed_images([picture(3)]), bf16.embed_images([picture(3)])
    assert b.dtype == np.float32 and float((a * b).sum()) > 0.99
    bf16.to(dtype=torch.float32)  # weights keep their bf16 rounding, but compute is float32 again
    assert next(bf16.model.parameters()).dtype == torch.float32
    assert float((bf16.embed_texts(["x"]) * fp32.embed_texts(["x"])).sum()) > 0.99


def test_empty_inputs_and_type_errors(tiny_embedder):
    assert tiny_embedder.embed_images([]).shape == (0, tiny_embedder.dim)
    assert tiny_embedder.embed_texts([]).shape == (0, tiny_embedder.dim)
    with pytest.raises(TypeError):
        tiny_embedder.embed_texts("not a list")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tiny_embedder.embed_texts(["ok", None])
    with pytest.raises(TypeError):
        tiny_embedder.embed_images(picture(0))


def test_progress_bar_on_request(tiny_embedder, capsys):
    tiny_embedder.embed_texts(["a"] * 5, batch_size=2, progress=True)
    assert "embedding texts" in capsys.readouterr().err


def test_loading_errors_are_clear(tmp_path, tiny_clip_dir):
    with pytest.raises(FileNotFoundError, match="not found"):
        Embedder.from_pretrained(f"local-dir:{tmp_path / 'nowhere'}")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "open_clip_config.json").write_text((tiny_clip_dir / "open_clip_config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        Embedder.from_pretrained(f"local-dir:{tmp_path / 'noweights'}")
    with pytest.raises(ValueError, match="pretrained is required"):
        Embedder.from_pretrained("ViT-B-32")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        Embedder.from_pretrained("No-Such-Model", pretrained="x")


def test_builtin_name_with_local_weights_file(tmp_path, tiny_embedder):
    # name + pretrained=<weights path> is the non-hub way to load a built-in architecture.
    import open_clip

    assert "tiny-clip-test" in open_clip.list_models()
    weights = tiny_embedder.save_pretrained(tmp_path / "w") / "open_clip_model.safetensors"
    again = Embedder.from_pretrained("tiny-clip-test", pretrained=str(weights))
    assert again.spec["pretrained"] == str(weights.resolve())
    np.testing.assert_array_equal(again.embed_texts(["z"]), tiny_embedder.embed_texts(["z"]))


# ---------------------------------------------------------------- local weights, strictly
def _folder_with(tmp_path, name, tiny_clip_dir, files: dict):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "open_clip_config.json").write_text((tiny_clip_dir / "open_clip_config.json").read_text())
    for file_name, write in files.items():
        write(folder / file_name)
    return folder


def test_pt_and_bin_weights_in_a_local_dir_are_loaded(tmp_path, tiny_clip_dir, tiny_embedder):
    # open_clip ignores .pt files and would build a random model; they must be loaded.
    state = tiny_embedder.model.state_dict()
    for file_name, payload in [("weights.pt", state), ("open_clip_pytorch_model.bin", {"state_dict": state})]:
        folder = _folder_with(tmp_path, file_name, tiny_clip_dir, {file_name: lambda p, s=payload: torch.save(s, p)})
        loaded = Embedder.from_pretrained(f"local-dir:{folder}")
        np.testing.assert_array_equal(loaded.embed_texts(["a cat"]), tiny_embedder.embed_texts(["a cat"]))
        assert loaded.fingerprint == tiny_embedder.fingerprint


def test_wrong_or_unreadable_weights_are_errors_naming_the_file(tmp_path, tiny_clip_dir, tiny_embedder):
    from retrieval import ModelLoadError

    state = dict(tiny_embedder.model.state_dict())
    cases = {
        "junk": ({"readme.pt": lambda p: p.write_bytes(b"hello")}, "readme.pt"),
        "missing-key": ({"model.pt": lambda p: torch.save({k: v for k, v in state.items()
                                                           if k != "logit_scale"}, p)}, "1 missing"),
        "other-arch": ({"model.pt": lambda p: torch.save(dict(state, text_projection=torch.zeros(32, 24)), p)},
                       "wrong shape"),
        "pickle": ({"model.pt": lambda p: torch.save({"opt": object()}, p)}, "weights_only"),
        "two-files": ({"a.safetensors": lambda p: p.write_bytes(b"x"), "b.pt": lambda p: p.write_bytes(b"y")},
                      "several weights files"),
    }
    for name, (files, message) in cases.items():
        folder = _folder_with(tmp_path, name, tiny_clip_dir, files)
        with pytest.raises(ModelLoadError, match=message) as info:
            Embedder.from_pretrained(f"local-dir:{folder}")
        assert str(folder) in str(info.value), name
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        Embedder.from_pretrained("tiny-clip-test", pretrained=str(tmp_path / "nothing.pt"))


def test_fingerprint_identifies_the_weights_not_the_dtype(tiny_clip_dir, tiny_embedder):
    again = Embedder.from_pretrained(f"local-dir:{tiny_clip_dir}")
    assert again.fingerprint == tiny_embedder.fingerprint and len(again.fingerprint) == 64
    half = Embedder.from_pretrained(f"local-dir:{tiny_clip_dir}", dtype="bfloat16")
    assert half.fingerprint == tiny_embedder.fingerprint  # hashed before the lossy cast
    late = Embedder.from_pretrained(f"local-dir:{tiny_clip_dir}").to(dtype=torch.float16)
    assert late.fingerprint == tiny_embedder.fingerprint
    torch.manual_seed(1)
    other = Embedder.from_config(TINY_CLIP_CFG, name="tiny-clip-test")
    assert other.fingerprint != tiny_embedder.fingerprint
