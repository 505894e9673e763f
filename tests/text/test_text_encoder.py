import json
import shutil

import pytest
import torch

from suti.text import TextEncoder

CAPTIONS = ["a photo of a red dog on the beach", "a watercolor of a blue teapot", ""]


@pytest.fixture(scope="module")
def bert_encoder(bert_folder):
    return TextEncoder.from_pretrained(bert_folder, max_length=16)


@pytest.fixture(params=["t5", "bert"])
def encoder(request, t5_encoder, bert_encoder):
    return {"t5": t5_encoder, "bert": bert_encoder}[request.param]


def test_loads_right_classes(t5_encoder, bert_encoder):
    assert type(t5_encoder.model).__name__ == "T5EncoderModel"
    assert type(bert_encoder.model).__name__ == "BertModel"
    assert (t5_encoder.model_type, bert_encoder.model_type) == ("t5", "bert")
    assert t5_encoder.dim == bert_encoder.dim == 64


def test_shapes_mask_dtype(encoder):
    emb, mask = encoder.encode(CAPTIONS)
    assert emb.shape == (3, 16, encoder.dim) and emb.dtype == torch.float32
    assert mask.shape == (3, 16) and mask.dtype == torch.bool
    lengths = mask.sum(1).tolist()
    assert lengths[0] > lengths[1] > lengths[2] >= 1  # "" still has its special token(s)
    # Mask is a prefix of True; padded positions are zero.
    for row, n in zip(mask, lengths):
        assert row[:n].all() and not row[n:].any()
    assert (emb[~mask] == 0).all()
    assert (emb[mask].abs().sum(-1) > 0).all()


def test_truncates_to_max_length(encoder):
    long = " ".join(["a red dog and a blue cat"] * 20)
    emb, mask = encoder.encode([long])
    assert emb.shape[1] == 16 and mask.all()


def test_frozen_and_eval(encoder):
    assert not any(p.requires_grad for p in encoder.model.parameters())
    assert not encoder.model.training
    emb, _ = encoder.encode(["a dog"])
    assert not emb.requires_grad


def test_different_captions_differ_and_repeat_is_deterministic(encoder):
    a, _ = encoder.encode(["a red dog", "a blue cat"])
    assert (a[0] - a[1]).abs().max() > 1e-3
    b, _ = encoder.encode(["a red dog", "a blue cat"])
    assert torch.equal(a, b)
    # Batch composition does not change a caption's embedding.
    c, _ = encoder.encode(["a blue cat"])
    torch.testing.assert_close(c[0], a[1], rtol=1e-5, atol=1e-5)


def test_rejects_bad_texts(t5_encoder):
    with pytest.raises(TypeError, match="list of strings"):
        t5_encoder.encode("a single string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        t5_encoder.encode(["ok", 3])
    emb, mask = t5_encoder.encode([])
    assert emb.shape == (0, 16, 64) and mask.shape == (0, 16)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TextEncoder.from_pretrained(tmp_path)
    # A folder that does not exist is named as such, not sent to the hub as a malformed repo id.
    for missing in (tmp_path / "gone", "./runs/text_encoder", "ckpt/a/text_encoder"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            TextEncoder.from_pretrained(missing)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        from suti.tiny import build_tiny_bert
        TextEncoder.from_pretrained(build_tiny_bert(), max_length=1000)


def test_dtype_and_config_roundtrip(t5_folder):
    enc = TextEncoder.from_pretrained(t5_folder, max_length=8, dtype="bfloat16")
    emb, _ = enc.encode(["a red dog"])
    assert emb.dtype == torch.bfloat16 and emb.shape == (1, 8, 64)
    cfg = enc.config_dict()
    assert cfg == {"name_or_path": str(t5_folder), "max_length": 8, "dtype": "bfloat16"}
    again = TextEncoder.from_config(json.loads(json.dumps(cfg)))
    assert again.max_length == 8 and again.dtype == torch.bfloat16


def test_sentence_transformers_folder(bert_folder, bert_encoder, tmp_path):
    """sentence-transformers keeps the HF model in a subfolder named by modules.json."""
    root = tmp_path / "st"
    shutil.copytree(bert_folder, root / "0_Transformer")
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    enc = TextEncoder.from_pretrained(root, max_length=16)
    a, _ = enc.encode(["a red dog"])
    b, _ = bert_encoder.encode(["a red dog"])
    assert torch.equal(a, b)


# ---------------------------------------------------------------- textual inversion


@pytest.fixture(params=["t5", "bert"])
def fresh_encoder(request, t5_folder, bert_folder):
    folder = {"t5": t5_folder, "bert": bert_folder}[request.param]
    return TextEncoder.from_pretrained(folder, max_length=16)


def test_add_tokens_initialises_from_word(fresh_encoder):
    enc = fresh_encoder
    rows_before = enc.model.get_input_embeddings().num_embeddings
    dog_ids = enc.tokenizer("dog", add_special_tokens=False)["input_ids"]
    dog = enc.model.get_input_embeddings().weight[dog_ids].mean(0)
    (sks, zwx) = enc.add_tokens(["<sks>", "<zwx>"], init_from="dog")
    assert enc.model.get_input_embeddings().num_embeddings == rows_before + 2
    assert torch.equal(enc.token_embedding("<sks>"), dog)
    assert torch.equal(enc.get_token_embedding("<sks>"), dog)
    assert enc.token_id("<zwx>") == zwx != sks
    assert sks in enc.tokenize(["a <sks> dog"])["input_ids"][0].tolist()
    assert not any(p.requires_grad for p in enc.model.parameters())
    with pytest.raises(ValueError, match="already exists"):
        enc.add_tokens(["<sks>"])
    with pytest.raises(KeyError, match="not in the vocabulary"):
        enc.token_id("<never-added>")


def test_token_override_equals_plain_encode_and_trains_only_the_override(fresh_encoder):
    enc = fresh_encoder
    enc.add_tokens(["<sks>"], init_from="dog")
    texts = ["a photo of <sks> on the beach", "a red cat"]
    plain, mask = enc.encode(texts)
    vec = enc.token_embedding("<sks>").requires_grad_(True)
    over, mask2 = enc.encode(texts, token_embeddings={"<sks>": vec})
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(over, plain, rtol=0, atol=1e-6)
    assert over.requires_grad

    target = torch.randn(over.shape, generator=torch.Generator().manual_seed(0))
    ((over - target) ** 2).mean().backward()
    assert vec.grad is not None and vec.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.model.parameters())

    # A changed vector changes only captions that contain the token. (Random, not a constant
    # shift: BERT's embedding LayerNorm would remove a constant.)
    moved, _ = enc.encode(texts, token_embeddings={"<sks>": (vec + target[0, 0, :vec.shape[0]]).detach()})
    assert (moved[0] - plain[0]).abs().max() > 1e-3
    torch.testing.assert_close(moved[1], plain[1], rtol=0, atol=1e-6)


def test_override_shape_and_unknown_token_errors(fresh_encoder):
    enc = fresh_encoder
    enc.add_tokens(["<sks>"])
    with pytest.raises(ValueError, match="shape"):
        enc.encode(["a <sks>"], token_embeddings={"<sks>": torch.zeros(3)})
    with pytest.raises(KeyError, match="<nope>"):
        enc.encode(["a dog"], token_embeddings={"<nope>": torch.zeros(enc.input_embedding_dim)})


def test_save_pretrained_roundtrip_keeps_added_tokens(fresh_encoder, tmp_path):
    enc = fresh_encoder
    enc.add_tokens(["<sks>"], init_from="cat")
    texts = ["a <sks> in the snow", "a red dog"]
    before, _ = enc.encode(texts)
    folder = enc.save_pretrained(tmp_path / "saved")
    assert (folder / "model.safetensors").exists()
    assert not list(folder.glob("*.bin"))
    again = TextEncoder.from_pretrained(folder, max_length=16)
    after, _ = again.encode(texts)
    assert again.token_id("<sks>") == enc.token_id("<sks>")
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
