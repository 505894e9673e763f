"""The pluggable parts of a build (embedder, captioner, prompt generator, expert), created lazily from the config.

Each is built on first use, once per process (Ray workers build their own from the same config).
Pass ready objects to Components(...) to use them directly (tests, notebooks).
"""
from __future__ import annotations

from .captions import load_captioner
from .config import BuilderConfig
from .embedding import load_embedder
from .experts import load_expert
from .prompts import load_prompt_generator

_UNSET = object()


class Components:
    def __init__(self, cfg: BuilderConfig, embedder=_UNSET, captioner=_UNSET, prompt_generator=_UNSET,
                 expert=_UNSET):
        self.cfg = cfg
        self._embedder, self._captioner = embedder, captioner
        self._prompt_generator, self._expert = prompt_generator, expert

    @property
    def embedder(self):
        if self._embedder is _UNSET:
            self._embedder = load_embedder(self.cfg.embedder)
        return self._embedder

    @property
    def captioner(self):
        if self._captioner is _UNSET:
            self._captioner = load_captioner(self.cfg.captions)
        return self._captioner

    @property
    def prompt_generator(self):
        if self._prompt_generator is _UNSET:
            self._prompt_generator = load_prompt_generator(self.cfg.prompts, self.cfg.seed)
        return self._prompt_generator

    @property
    def expert(self):
        if self._expert is _UNSET:
            self._expert = load_expert(self.cfg.expert, self.cfg.seed)
        return self._expert


_CACHE: dict[str, Components] = {}


def components_for(cfg: BuilderConfig) -> Components:
    """One Components per config per process."""
    key = cfg.fingerprint()
    if key not in _CACHE:
        _CACHE[key] = Components(cfg)
    return _CACHE[key]
