import json
import pickle

import numpy as np
import pytest
import torch

from suti.text import TextEncoder
from suti.text_cache import TextCacheError, TextEmbeddingCache, build_text_cache, main

CAPTIONS = [f"a {c} {o} on the beach" for c in ("red", "blue", "green") for o in ("dog", "cat", "vase")]


class CountingEncoder:
    """The real encoder, counting calls and optionally dying after `fail_after` batches."""

    def __init__(self, encoder, fail_after=None, scale=1.0):
        self.inner, self.calls, self.fail_after, self.scale = encoder, 0, fail_after, scale
        self.name_or_path, self.max_length, self.dim = encoder.name_or_path, encoder.max_length, encoder.dim
        self.model_type = encoder.model_type

    def encode(self, texts):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        emb, mask = self.inner.encode(texts)
        return emb * self.scale, mask


def test_build_open_lookup_matches_direct_encode(t5_encoder, tmp_path):
    folder = build_text_cache(t5_encoder, CAPTIONS + CAPTIONS[:3], tmp_path / "c", batch_size=4, progress=False)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["count"] == len(CAPTIONS) and meta["max_length"] == 16 and meta["dim"] == 64
    assert meta["dtype"] == "float16" and len(meta["captions_sha1"]) == 40
    assert not (folder / "progress.json").exists()

    cache = TextEmbeddingCache.open(folder)
    assert len(cache) == len(CAPTIONS) and CAPTIONS[0] in cache and "a purple cow" not in cache
    assert isinstance(cache._emb, np.memmap)
    query = [CAPTIONS[5], CAPTIONS[0], CAPTIONS[5]]
    emb, mask = cache.lookup(query)
    ref, ref_mask = t5_encoder.encode(query)
    assert emb.dtype == torch.float32 and emb.shape == (3, 16, 64)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(emb, ref, rtol=1e-3, atol=2e-3)  # float16 storage
    # Lookup normalises whitespace like the build did.
    torch.testing.assert_close(cache.lookup(["  " + CAPTIONS[5] + "\n"])[0], emb[:1])
    cache.verify(t5_encoder)


def test_float32_cache_is_exact(t5_encoder, tmp_path):
    folder = build_text_cache(t5_encoder, CAPTIONS, tmp_path / "c", dtype="float32", progress=False)
    emb, _ = TextEmbeddingCache.open(folder).lookup(CAPTIONS)
    ref, _ = t5_encoder.encode(CAPTIONS)
    torch.testing.assert_close(emb, ref, rtol=0, atol=1e-6)


def test_missing_caption_names_it(t5_encoder, tmp_path):
    cache = TextEmbeddingCache.open(build_text_cache(t5_encoder, CAPTIONS, tmp_path / "c", progress=False))
    with pytest.raises(KeyError, match="a purple cow"):
        cache.lookup([CAPTIONS[0], "a purple cow"])


def test_complete_cache_is_not_rebuilt(t5_encoder, tmp_path):
    build_text_cache(t5_encoder, CAPTIONS, tmp_path / "c", progress=False)
    counting = CountingEncoder(t5_encoder)
    build_text_cache(counting, CAPTIONS, tmp_path / "c", progress=False)
    assert counting.calls == 0
    # Different captions in the same folder: refuse unless asked to overwrite.
    with pytest.raises(TextCacheError, match="count, captions_sha1"):
        build_text_cache(counting, CAPTIONS[:4], tmp_path / "c", progress=False)
    build_text_cache(counting, CAPTIONS[:4], tmp_path / "c", progress=False, overwrite=True)
    assert len(TextEmbeddingCache.open(tmp_path / "c")) == 4


def test_resume_after_interruption_gives_identical_cache(t5_encoder, tmp_path):
    build_text_cache(t5_encoder, CAPTIONS, tmp_path / "ref", batch_size=2, progress=False)

    dying = CountingEncoder(t5_encoder, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        build_text_cache(dying, CAPTIONS, tmp_path / "c", batch_size=2, progress=False)
    assert not (tmp_path / "c" / "meta.json").exists()
    assert json.loads((tmp_path / "c" / "progress.json").read_text())["rows_done"] == 4
    with pytest.raises(TextCacheError, match="incomplete .4/9 rows"):
        TextEmbeddingCache.open(tmp_path / "c")

    resumed = CountingEncoder(t5_encoder)
    build_text_cache(resumed, CAPTIONS, tmp_path / "c", batch_size=2, progress=False)
    assert resumed.calls == 3  # rows 4..8 only, in batches of 2
    for name in ("embeddings.npy", "mask.npy", "captions.jsonl"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    ref_meta = json.loads((tmp_path / "ref" / "meta.json").read_text())
    assert json.loads((tmp_path / "c" / "meta.json").read_text()) == ref_meta


def test_interrupted_build_with_other_captions_starts_over(t5_encoder, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        build_text_cache(CountingEncoder(t5_encoder, fail_after=1), CAPTIONS, tmp_path / "c",
                         batch_size=2, progress=False)
    counting = CountingEncoder(t5_encoder)
    build_text_cache(counting, CAPTIONS[:5], tmp_path / "c", batch_size=2, progress=False)
    assert counting.calls == 3
    emb, _ = TextEmbeddingCache.open(tmp_path / "c").lookup(CAPTIONS[:5])
    torch.testing.assert_close(emb, t5_encoder.encode(CAPTIONS[:5])[0], rtol=1e-3, atol=2e-3)


def test_incompatible_cache_gives_clear_error(t5_encoder, bert_folder, tmp_path):
    cache = TextEmbeddingCache.open(build_text_cache(t5_encoder, CAPTIONS, tmp_path / "c", progress=False))
    cache.check_compatible(t5_encoder.name_or_path, 16, 64)
    with pytest.raises(TextCacheError, match="max_length 16 != 32"):
        cache.check_compatible(t5_encoder.name_or_path, 32, 64)
    with pytest.raises(TextCacheError, match="dim 64 != 128"):
        cache.check_compatible(None, 16, 128)
    with pytest.raises(TextCacheError, match="encoder .*bert"):
        cache.check_compatible(str(bert_folder), 16, 64)
    bert = TextEncoder.from_pretrained(bert_folder, max_length=16)
    with pytest.raises(TextCacheError):
        cache.verify(bert)


def test_float16_overflow_is_refused(t5_encoder, tmp_path):
    with pytest.raises(TextCacheError, match="not finite in float16.*float32"):
        build_text_cache(CountingEncoder(t5_encoder, scale=1e6), CAPTIONS, tmp_path / "c", progress=False)


def test_bad_inputs(t5_encoder, tmp_path):
    with pytest.raises(TypeError, match="single string"):
        build_text_cache(t5_encoder, "a dog", tmp_path / "c", progress=False)
    with pytest.raises(TypeError, match="caption #1"):
        build_text_cache(t5_encoder, ["a dog", None], tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="no captions"):
        build_text_cache(t5_encoder, [], tmp_path / "c", progress=False)
    with pytest.raises(TextCacheError, match="not a text cache"):
        TextEmbeddingCache.open(tmp_path)


def test_pickles_as_a_fresh_memory_map(t5_encoder, tmp_path):
    cache = TextEmbeddingCache.open(build_text_cache(t5_encoder, CAPTIONS, tmp_path / "c", progress=False))
    blob = pickle.dumps(cache)
    assert len(blob) < 1000  # the folder, not the arrays
    again = pickle.loads(blob)
    assert torch.equal(again.lookup(CAPTIONS)[0], cache.lookup(CAPTIONS)[0])


def test_cli_builds_cache_from_caption_files(t5_folder, tmp_path, capsys):
    (tmp_path / "caps.txt").write_text("a red dog\n\na blue cat\n")
    (tmp_path / "more.jsonl").write_text('{"caption": "a red dog"}\n{"text": "a green vase"}\n')
    rc = main(["text-cache", "--encoder", str(t5_folder), "--captions", str(tmp_path / "caps.txt"),
               str(tmp_path / "more.jsonl"), "--out", str(tmp_path / "cache"), "--max-length", "12",
               "--batch-size", "2", "--device", "cpu"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unique"] == 3 and summary["captions_read"] == 4
    assert summary["skipped"] == {"blank line in .txt": 1}
    cache = TextEmbeddingCache.open(tmp_path / "cache")
    assert cache.max_length == 12 and "a green vase" in cache
