"""Text conditioning for training: a frozen TextEncoder, or a precomputed TextEmbeddingCache.

With a cache, captions are looked up in the memory-mapped arrays and the encoder never runs (it is
optional: when given, it encodes the few captions the cache lacks, e.g. sample prompts). Without an
encoder, a caption missing from the cache makes its training row be skipped and counted.
"""
from __future__ import annotations

import torch


class TextConditioner:
    def __init__(self, encoder=None, cache=None):
        if encoder is None and cache is None:
            raise ValueError("text conditioning needs a text encoder or a text embedding cache")
        self.encoder, self.cache = encoder, cache
        if encoder is not None and cache is not None:
            cache.check_compatible(None, encoder.max_length, encoder.dim)

    @classmethod
    def from_spec(cls, spec, device="cpu") -> "TextConditioner":
        encoder = cache = None
        if spec.cache:
            from ..text_cache import TextEmbeddingCache

            cache = TextEmbeddingCache.open(spec.cache)
        if spec.encoder:
            from ..text import TextEncoder

            encoder = TextEncoder.from_pretrained(spec.encoder, max_length=spec.max_length, dtype=spec.dtype,
                                                  device=device)
        return cls(encoder, cache)

    @property
    def dim(self) -> int:
        return self.cache.dim if self.cache is not None else self.encoder.dim

    @property
    def max_length(self) -> int:
        return self.cache.max_length if self.cache is not None else self.encoder.max_length

    def describe(self) -> dict:
        out = {"dim": self.dim, "max_length": self.max_length}
        if self.encoder is not None:
            out["encoder"] = self.encoder.config_dict()
        if self.cache is not None:
            out["cache"] = {"folder": str(self.cache.folder), "encoder": self.cache.encoder_name}
        return out

    def available(self, caption: str) -> bool:
        return self.encoder is not None or caption in self.cache

    @torch.no_grad()
    def __call__(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(emb (B, L, D) float32, mask (B, L) bool) on ``device``."""
        captions = list(captions)
        if self.cache is None:
            emb, mask = self.encoder.encode(captions)
            return emb.to(device, torch.float32), mask.to(device)
        hit = [i for i, c in enumerate(captions) if c in self.cache]
        if len(hit) == len(captions):
            emb, mask = self.cache.lookup(captions, device=device)
            return emb, mask
        if self.encoder is None:
            missing = next(c for c in captions if c not in self.cache)
            raise KeyError(f"caption not in text cache {self.cache.folder} and no text encoder given: {missing!r}")
        emb = torch.zeros(len(captions), self.max_length, self.dim, device=device)
        mask = torch.zeros(len(captions), self.max_length, dtype=torch.bool, device=device)
        if hit:
            e, m = self.cache.lookup([captions[i] for i in hit], device=device)
            emb[hit], mask[hit] = e, m
        miss = [i for i in range(len(captions)) if i not in set(hit)]
        e, m = self.encoder.encode([captions[i] for i in miss])
        emb[miss], mask[miss] = e.to(device, torch.float32), m.to(device)
        return emb, mask

    def exemplars(self, captions: list[list[str]], slot_mask: torch.Tensor, device):
        """Exemplar captions (B rows of K, padded) -> (emb (B,K,L,D), mask (B,K,L)); padded slots are zero."""
        b, k = slot_mask.shape
        flat = [(i, j) for i in range(b) for j in range(k) if bool(slot_mask[i, j])]
        emb = torch.zeros(b, k, self.max_length, self.dim, device=device)
        mask = torch.zeros(b, k, self.max_length, dtype=torch.bool, device=device)
        if flat:
            e, m = self([captions[i][j] for i, j in flat], device)
            rows = torch.tensor([i for i, _ in flat], device=device)
            cols = torch.tensor([j for _, j in flat], device=device)
            emb[rows, cols], mask[rows, cols] = e, m
        return emb, mask
