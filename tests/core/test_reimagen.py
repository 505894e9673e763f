"""Re-Imagen mode: the pipeline retrieves exemplar pairs from a PairsDatabase by the prompt."""
import pytest
import torch
from PIL import Image

from suti.pipeline import new_pipeline
from suti.presets import preset

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory):
    from retrieval import Embedder, PairsDatabase

    torch.manual_seed(0)
    emb = Embedder.from_config(TINY_CLIP, name="tiny-clip-reimagen")
    root = tmp_path_factory.mktemp("pairs")
    colours = {"red": (220, 20, 20), "green": (20, 200, 30), "blue": (20, 30, 220), "yellow": (230, 220, 20)}
    for i, (name, rgb) in enumerate(colours.items()):
        Image.new("RGB", (40 + 7 * i, 36), rgb).save(root / f"{name}.jpg")
        (root / f"{name}.txt").write_text(f"a {name} square")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "broken.txt").write_text("broken")
    db, report = PairsDatabase.build(tmp_path_factory.mktemp("db") / "db", emb, image_folder=root, progress=False)
    return db, report


def _pipe(enc):
    torch.manual_seed(0)
    pipe = new_pipeline(enc, [preset("tiny-base32", text_embed_dim=enc.dim, context=True, stage_name="base")])
    for n, p in pipe.cascade.named_parameters():  # "trained" weights so exemplars matter
        if "out" in n and p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.05)
    return pipe


def test_retrieve_from_uses_retrieved_pairs(tiny_db, tiny_text_encoder):
    db, report = tiny_db
    assert len(db) == 4
    assert [s["key"] for s in db.skipped] == ["broken"]  # counted with its key, not silently dropped
    pipe = _pipe(tiny_text_encoder)
    out = pipe("a red square", retrieve_from=db, k=3, steps=2, seed=0, output_type="pt")
    records = pipe.retrieved
    assert len(records) == 3 and all("caption" in r for r in records)
    # The same call with the retrieved pairs given explicitly gives the same images.
    imgs = [db.load_image(r) for r in records]
    ref = pipe("a red square", subject_images=imgs, subject_texts=[r["caption"] for r in records], steps=2, seed=0,
               output_type="pt")
    assert torch.equal(out, ref)
    # ... and differs from plain text-to-image, since the context layers are active.
    plain = pipe("a red square", steps=2, seed=0, output_type="pt")
    assert not torch.equal(out, plain)


def test_retrieve_from_errors(tiny_db, tiny_text_encoder, tmp_path):
    db, _ = tiny_db
    pipe = _pipe(tiny_text_encoder)
    with pytest.raises(ValueError, match="not both"):
        pipe("x", retrieve_from=db, subject_images=[Image.new("RGB", (8, 8))], steps=1)
    with pytest.raises(ValueError, match="one prompt"):
        pipe(["a", "b"], retrieve_from=db, steps=1)
