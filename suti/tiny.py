"""Tiny, locally built Hugging Face text encoders for tests, examples and benchmarks.

Nothing is downloaded: the tokenizer is trained here with `tokenizers` on a small built-in
English caption corpus, the model is randomly initialised from a fixed seed, and both are
written with `save_pretrained` (safetensors). The folders load with
`suti.text.TextEncoder.from_pretrained(folder)` exactly like a real checkpoint would.

Built folders are cached per process (keyed by the arguments), so tests can call the
builders freely.
"""

from __future__ import annotations

import atexit
import hashlib
import inspect
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from itertools import product
from pathlib import Path
from typing import Iterable

import torch

__all__ = ["build_tiny_t5", "build_tiny_bert", "tiny_corpus"]

_COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
            "white", "grey", "gray", "golden", "silver", "teal", "beige", "navy", "cream"]
_SHAPES = ["circle", "square", "triangle", "cube", "sphere", "cylinder", "cone", "star",
           "heart", "hexagon", "ring", "spiral", "round", "striped", "spotted"]
_OBJECTS = ["dog", "cat", "puppy", "kitten", "bird", "horse", "teddy bear", "robot", "backpack",
            "sneaker", "boot", "vase", "teapot", "mug", "cup", "clock", "candle", "toy", "car",
            "bicycle", "guitar", "chair", "sofa", "lamp", "sunglasses", "hat", "glasses", "duck",
            "monster", "plushie", "bowl", "can", "house", "tree", "flower", "rose", "apple",
            "banana", "cake", "pizza", "book", "bottle", "phone", "camera", "watch", "shoe"]
_SCENES = ["on the beach", "in the snow", "in the jungle", "on a wooden table", "in a kitchen",
           "on top of a mountain", "in a city street at night", "under the sea", "in space",
           "on the moon", "in a garden", "next to a lake", "in the rain", "on a pink blanket",
           "with the eiffel tower in the background", "on a cobblestone street", "in a forest",
           "on a sunny day", "floating in the water", "in front of a red brick wall"]
_STYLES = ["a photo of", "a painting of", "a watercolor of", "a sketch of", "a 3d render of",
           "a close up photo of", "a cartoon of", "an oil painting of", "a pencil drawing of",
           "a high resolution photograph of", "a pixel art image of", "a picture of"]
_EXTRA_WORDS = (
    "the a an of in on at with and or for to from by is are was be this that it its his her "
    "their our my your as into over under above below between through across around along "
    "wearing holding sitting standing running sleeping jumping looking walking flying swimming "
    "playing eating drinking reading writing painting riding driving smiling laughing waiting "
    "lying leaning resting posing carrying pulling pushing climbing dancing singing cooking "
    "near behind beside inside outside during after before while without against toward "
    "small large big tiny huge old new young shiny soft fluffy wooden metal glass plastic paper "
    "leather cotton wool silk ceramic stone marble concrete velvet fur furry hairy smooth rough "
    "style art artwork image photograph photo portrait landscape background foreground scene "
    "light dark bright colorful vintage modern realistic cute happy sad angry calm quiet loud "
    "one two three four five six seven eight nine ten many several some every each other "
    "left right top bottom front back side view angle close far high low up down "
    "subject object person man woman child boy girl baby family friend people crowd team "
    "sky cloud sun moon star rain snow wind storm fog sunset sunrise night day morning evening "
    "water river lake sea ocean wave sand beach desert mountain hill valley field meadow "
    "grass leaf leaves branch flower garden park road street bridge building tower castle "
    "city town village farm barn fence wall window door roof floor room kitchen bedroom "
    "table desk shelf box basket bag bucket jar plate fork knife spoon pan pot oven fridge "
    "computer keyboard screen television radio speaker headphones microphone piano violin drum "
    "ball kite balloon umbrella scarf jacket coat shirt dress skirt pants jeans sock glove "
    "necklace bracelet earring crown helmet mask costume uniform suit tie bow ribbon "
    "food bread cheese egg meat fish chicken soup salad fruit orange lemon cherry grape "
    "coffee tea milk juice wine beer ice cream chocolate cookie candy sugar honey "
    "animal lion tiger bear wolf fox rabbit mouse deer cow pig sheep goat elephant monkey "
    "giraffe zebra penguin owl eagle parrot frog turtle snake shark whale dolphin butterfly "
    "train plane boat ship truck bus motorcycle rocket wheel engine "
    "drawing sketch cartoon anime comic poster illustration render sculpture statue mosaic "
    "watercolor oil pencil ink charcoal pastel neon pixel abstract surreal minimal detailed "
    "famous beautiful ugly strange funny scary elegant simple complex perfect natural "
    "warm cold hot cool wet dry clean dirty empty full open closed broken tall short long wide "
    "sks zwx unique special token very really quite made covered filled shaped colored"
).split()


def tiny_corpus() -> list[str]:
    """Deterministic English caption corpus (a few thousand short captions)."""
    lines: list[str] = []
    for style, colour, obj in product(_STYLES, _COLOURS, _OBJECTS):
        lines.append(f"{style} a {colour} {obj}")
    for obj, scene in product(_OBJECTS, _SCENES):
        lines.append(f"a {obj} {scene}")
    for colour, shape in product(_COLOURS, _SHAPES):
        lines.append(f"a {colour} {shape}")
    for i in range(0, len(_EXTRA_WORDS), 7):
        lines.append(" ".join(_EXTRA_WORDS[i:i + 7]))
    # Each word alone and before punctuation: the Unigram seed search only proposes a piece
    # that is followed by more than one distinct character somewhere in the corpus.
    words = sorted({w for line in lines for w in line.split()})
    lines.extend(words)
    lines.extend(f"{w}." for w in words)
    lines.extend(w.capitalize() for w in words)
    lines.append("0 1 2 3 4 5 6 7 8 9 . , ! ? ' \" - : ; ( ) / & %")
    return lines


_ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()/&%")

# ---------------------------------------------------------------- per-process build cache

_CACHE_ROOT: Path | None = None


def _cache_root() -> Path:
    global _CACHE_ROOT
    if _CACHE_ROOT is None:
        _CACHE_ROOT = Path(tempfile.mkdtemp(prefix=f"suti-tiny-{os.getpid()}-"))
        atexit.register(shutil.rmtree, _CACHE_ROOT, True)
    return _CACHE_ROOT


def _cached_build(kind: str, folder, args: dict, build, cache: bool = True) -> Path:
    """Build into a per-process cache keyed by `args`, then copy to `folder` if one is given."""
    if not cache:
        if folder is None:
            raise ValueError("cache=False needs a folder to build into")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        build(folder)
        return folder
    key = hashlib.sha1(json.dumps([kind, args], sort_keys=True).encode()).hexdigest()[:16]
    cached = _cache_root() / f"{kind}-{key}"
    if not (cached / ".done").exists():
        tmp = Path(tempfile.mkdtemp(dir=_cache_root(), prefix=".building-"))
        build(tmp)
        (tmp / ".done").write_text("ok")
        if cached.exists():  # a concurrent thread in this process won the race
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, cached)
    if folder is None:
        return cached
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for item in cached.iterdir():
        if item.name != ".done":
            shutil.copy2(item, folder / item.name)
    return folder


def _corpus(extra: Iterable[str] | None) -> list[str]:
    lines = tiny_corpus()
    if extra is not None:
        if isinstance(extra, str):
            raise TypeError("corpus must be an iterable of strings, not a single string")
        lines.extend(str(x) for x in extra)
    return lines


# ---------------------------------------------------------------- T5


def _train_unigram(lines: list[str], vocab_size: int, max_piece_len: int = 16,
                   rounds: int = 6) -> list[tuple[str, float]]:
    """Train a SentencePiece-style Unigram vocabulary by hard EM; returns [(piece, log_prob)].

    Written here rather than using `tokenizers.trainers.UnigramTrainer` because that trainer's
    scores (and WordPiece's merges) depend on Rust hash-map order, so two runs differ; this
    one is deterministic. Ids follow T5: <pad> 0, </s> 1, <unk> 2.
    """
    # No normaliser: transformers' T5 tokenizer keeps only a SentencePiece charsmap one, so
    # training on raw text keeps the saved and reloaded tokenizers identical.
    words = Counter("▁" + w for line in lines for w in line.split())
    chars = sorted({c for w in words for c in w} | set(_ALPHABET))
    # Seed: every in-word substring seen at least twice, ranked by coverage (freq * length).
    sub: Counter = Counter()
    for w, n in words.items():
        for i in range(len(w)):
            for j in range(i + 2, min(len(w), i + max_piece_len) + 1):
                sub[w[i:j]] += n
    seeds = sorted((s for s, c in sub.items() if c >= 2), key=lambda s: (-sub[s] * len(s), s))
    counts = {s: float(sub[s]) for s in seeds[: 8 * vocab_size]}
    target = max(vocab_size - 3 - len(chars), 0)

    def log_probs(cnt):
        total = sum(cnt.values()) + len(chars)
        lp = {s: math.log(c / total) for s, c in cnt.items() if c > 0}
        for c in chars:  # every character stays reachable, so no word ever needs <unk>
            lp[c] = math.log((cnt.get(c, 0.0) + 1.0) / total)
        return lp

    def viterbi(word, lp):
        best = [(0.0, 0)] + [(-math.inf, 0)] * len(word)
        for end in range(1, len(word) + 1):
            for start in range(max(0, end - max_piece_len), end):
                score = lp.get(word[start:end])
                if score is not None and best[start][0] + score > best[end][0]:
                    best[end] = (best[start][0] + score, start)
        pieces, end = [], len(word)
        while end > 0:
            start = best[end][1]
            pieces.append(word[start:end])
            end = start
        return pieces

    for r in range(rounds):
        lp = log_probs(counts)
        new: Counter = Counter()
        for w, n in sorted(words.items()):
            for piece in viterbi(w, lp):
                new[piece] += n
        multi = sorted((s for s in new if len(s) > 1), key=lambda s: (-new[s], s))
        keep = target if r == rounds - 1 else max(target, int(len(multi) * 0.8))
        counts = {s: float(new[s]) for s in multi[:keep]}
        counts.update({c: float(new.get(c, 0)) for c in chars})
    lp = log_probs({s: c for s, c in counts.items() if len(s) > 1})
    ranked = sorted(lp.items(), key=lambda kv: (-round(kv[1], 6), kv[0]))
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(s, round(v, 6)) for s, v in ranked]


def _t5_tokenizer(pieces, folder: Path):
    from transformers import T5TokenizerFast

    kwargs = dict(eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
                  model_max_length=512)
    if "vocab" in inspect.signature(T5TokenizerFast.__init__).parameters:  # transformers >= 5
        return T5TokenizerFast(vocab=pieces, **kwargs)
    # transformers 4.x: build the backend ourselves and hand it over as a tokenizer.json file.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)])
    path = folder / "_backend_tokenizer.json"
    backend.save(str(path))
    try:
        return T5TokenizerFast(tokenizer_file=str(path), **kwargs)
    finally:
        path.unlink()


def build_tiny_t5(folder=None, d_model: int = 64, layers: int = 2, heads: int = 4,
                  vocab_size: int = 1000, d_ff: int | None = None,
                  corpus: Iterable[str] | None = None, seed: int = 0, cache: bool = True) -> Path:
    """Build a tiny T5 encoder + tokenizer folder (T5EncoderModel, T5TokenizerFast).

    `folder=None` returns a per-process cached folder (do not modify it); otherwise the files
    are copied to `folder` (`cache=False`: built there from scratch). Same arguments ->
    identical tensors and vocabulary.
    """
    if d_model % heads:
        raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
    lines = _corpus(corpus)
    args = dict(d_model=d_model, layers=layers, heads=heads, vocab_size=vocab_size, d_ff=d_ff,
                corpus_sha1=hashlib.sha1("\n".join(lines).encode()).hexdigest(), seed=seed)

    def build(out: Path):
        from transformers import T5Config, T5EncoderModel

        tokenizer = _t5_tokenizer(_train_unigram(lines, vocab_size), out)
        config = T5Config(
            vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads,
            d_ff=d_ff or 2 * d_model, num_layers=layers, num_heads=heads,
            relative_attention_num_buckets=16, relative_attention_max_distance=64,
            feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0, tie_word_embeddings=False,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = T5EncoderModel(config)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _cached_build("t5", folder, args, build, cache)


# ---------------------------------------------------------------- BERT


def _train_wordpiece(lines: list[str], vocab_size: int) -> dict[str, int]:
    """Deterministic WordPiece vocabulary: specials, characters, then frequent words and suffixes."""
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words = Counter(w for line in lines for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)))
    chars = sorted({c for w in words for c in w} | {c.lower() for c in _ALPHABET})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    # Whole words and word-internal suffixes compete on frequency; greedy longest-match
    # tokenisation then falls back to characters for anything unseen.
    candidates: Counter = Counter()
    for w, n in words.items():
        if len(w) > 1:
            candidates[w] += 2 * n
        for i in range(1, len(w) - 1):
            candidates["##" + w[i:]] += n
    taken = set(vocab)
    for token in sorted(candidates, key=lambda t: (-candidates[t], t)):
        if len(vocab) >= vocab_size:
            break
        if token not in taken and candidates[token] >= 2:
            vocab.append(token)
            taken.add(token)
    return {t: i for i, t in enumerate(vocab)}


def _bert_tokenizer(vocab: dict[str, int], folder: Path):
    from transformers import BertTokenizerFast

    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers >= 5
        return BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=512)
    path = folder / "vocab.txt"
    path.write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(path), do_lower_case=True, model_max_length=512)


def build_tiny_bert(folder=None, hidden: int = 64, layers: int = 2, heads: int = 4,
                    vocab_size: int = 1000, corpus: Iterable[str] | None = None,
                    seed: int = 0, cache: bool = True) -> Path:
    """Build a tiny BERT encoder + WordPiece tokenizer folder (BertModel, BertTokenizerFast).

    Same folder/cache semantics as `build_tiny_t5`.
    """
    if hidden % heads:
        raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
    lines = _corpus(corpus)
    args = dict(hidden=hidden, layers=layers, heads=heads, vocab_size=vocab_size,
                corpus_sha1=hashlib.sha1("\n".join(lines).encode()).hexdigest(), seed=seed)

    def build(out: Path):
        from transformers import BertConfig, BertModel

        vocab = _train_wordpiece(lines, vocab_size)
        if list(vocab.values()) != list(range(len(vocab))):
            raise RuntimeError("trained WordPiece vocabulary ids are not contiguous")
        tokenizer = _bert_tokenizer(vocab, out)
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=2 * hidden,
            max_position_embeddings=512, pad_token_id=0,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BertModel(config)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _cached_build("bert", folder, args, build, cache)
