"""Fixtures of the suti serve tests: a tiny SuTI checkpoint (32 px base with context attention + 64 px SR)."""
import pytest
import torch
from PIL import Image
from web_helpers import build_tiny_suti


@pytest.fixture(scope="session")
def tiny_suti_dir(tmp_path_factory, tiny_text_encoder):
    folder = tmp_path_factory.mktemp("tiny-suti") / "ckpt"
    build_tiny_suti(tiny_text_encoder).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_suti(tiny_suti_dir):
    from suti.pipeline import SuTIPipeline

    return SuTIPipeline.from_pretrained(tiny_suti_dir)


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def pairs_db_folder(tmp_path_factory):
    """A database built with a saved (local-dir:) tiny CLIP, so it reopens from its folder alone."""
    from retrieval import Embedder, PairsDatabase

    torch.manual_seed(0)
    clip_dir = Embedder.from_config(TINY_CLIP, name="tiny-clip-serve").save_pretrained(
        tmp_path_factory.mktemp("clip") / "clip")
    emb = Embedder.from_pretrained(f"local-dir:{clip_dir}")
    root = tmp_path_factory.mktemp("pairs")
    for i, (name, rgb) in enumerate({"red": (220, 20, 20), "green": (20, 200, 30), "blue": (20, 30, 220)}.items()):
        Image.new("RGB", (40 + 7 * i, 36), rgb).save(root / f"{name}.jpg")
        (root / f"{name}.txt").write_text(f"a {name} mug")
    folder = tmp_path_factory.mktemp("db") / "db"
    PairsDatabase.build(folder, emb, image_folder=root, progress=False)
    return folder
