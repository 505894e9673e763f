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
import os
import shutil
import tempfile
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


def _cached_build(kind: str, folder, args: dict, build) -> Path:
    """Build into a per-process cache keyed by `args`, then copy to `folder` if one is given."""
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


def _train_unigram(lines: list[str], vocab_size: int):
    """Train a SentencePiece-style Unigram model; returns [(piece, score)] with T5's special ids."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],  # T5 convention: pad 0, eos 1, unk 2
        unk_token="<unk>",
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    pieces = [(str(p), float(s)) for p, s in vocab]
    if [p for p, _ in pieces[:3]] != ["<pad>", "</s>", "<unk>"]:
        raise RuntimeError(f"unexpected special-token order in trained vocab: {pieces[:3]}")
    return pieces


def _t5_tokenizer(pieces, folder: Path):
    from transformers import T5TokenizerFast

    kwargs = dict(eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
                  model_max_length=512)
    if "vocab" in inspect.signature(T5TokenizerFast.__init__).parameters:  # transformers >= 5
        return T5TokenizerFast(vocab=pieces, **kwargs)
    # transformers 4.x: build the backend ourselves and hand it over as a tokenizer.json file.
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
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
                  corpus: Iterable[str] | None = None, seed: int = 0) -> Path:
    """Build a tiny T5 encoder + tokenizer folder (T5EncoderModel, T5TokenizerFast).

    `folder=None` returns a per-process cached folder (do not modify it); otherwise the files
    are written to `folder`. Same arguments -> identical tensors and vocabulary.
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

    return _cached_build("t5", folder, args, build)


# ---------------------------------------------------------------- BERT


def _train_wordpiece(lines: list[str], vocab_size: int) -> dict[str, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        initial_alphabet=[c.lower() for c in _ALPHABET],
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return dict(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))


def _bert_tokenizer(vocab: dict[str, int], folder: Path):
    from transformers import BertTokenizerFast

    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers >= 5
        return BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=512)
    path = folder / "vocab.txt"
    path.write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(path), do_lower_case=True, model_max_length=512)


def build_tiny_bert(folder=None, hidden: int = 64, layers: int = 2, heads: int = 4,
                    vocab_size: int = 1000, corpus: Iterable[str] | None = None,
                    seed: int = 0) -> Path:
    """Build a tiny BERT encoder + WordPiece tokenizer folder (BertModel, BertTokenizerFast)."""
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

    return _cached_build("bert", folder, args, build)
