import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from suti.tiny import build_tiny_bert, build_tiny_t5


@pytest.mark.parametrize("build", [build_tiny_t5, build_tiny_bert])
def test_builds_are_deterministic(build, tmp_path):
    a = build(tmp_path / "a", cache=False)
    b = build(tmp_path / "b", cache=False)
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ta.keys() == tb.keys() and len(ta) > 5
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert json.loads((a / "tokenizer.json").read_text()) == json.loads((b / "tokenizer.json").read_text())
    c = build(tmp_path / "c", cache=False, seed=1)
    tc = load_file(c / "model.safetensors")
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)


def test_tiny_t5_follows_t5_conventions(t5_folder):
    config = AutoConfig.from_pretrained(t5_folder)
    tok = AutoTokenizer.from_pretrained(t5_folder)
    assert config.model_type == "t5" and config.d_model == 64 and config.num_layers == 2
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert 800 <= len(tok) <= 1000 and config.vocab_size == len(tok)
    ids = tok("a photo of a red dog on the beach")["input_ids"]
    assert ids[-1] == 1 and tok.unk_token_id not in ids
    # The trained vocabulary holds whole common words, not just characters.
    assert tok.tokenize("a photo of a red dog") == ["▁a", "▁photo", "▁of", "▁a", "▁red", "▁dog"]


def test_tiny_bert_tokenizer(bert_folder):
    config = AutoConfig.from_pretrained(bert_folder)
    tok = AutoTokenizer.from_pretrained(bert_folder)
    assert config.model_type == "bert" and config.hidden_size == 64
    assert tok.tokenize("A Photo of a red DOG") == ["a", "photo", "of", "a", "red", "dog"]
    assert tok.unk_token_id not in tok("zebra xylophone quantum")["input_ids"]


def test_cached_build_is_reused_and_copied(tmp_path):
    assert build_tiny_t5() == build_tiny_t5()
    out = build_tiny_t5(tmp_path / "copy")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in build_tiny_t5().iterdir() if p.name != ".done")
    assert build_tiny_t5(d_model=32, heads=2) != build_tiny_t5()


def test_extra_corpus_changes_vocabulary():
    tok = AutoTokenizer.from_pretrained(build_tiny_t5(corpus=["quokka quokka quokka"] * 20))
    assert "▁quokka" in tok.get_vocab()
