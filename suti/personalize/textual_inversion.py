"""Textual Inversion (Gal et al. 2023): learn a new token's input embedding; the model stays frozen.

The new token's vector lives in the text encoder's *input* embedding space and is optimised through
the frozen encoder and the frozen base U-Net. Only the vector is saved (a few KB per subject).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..checkpoint import atomic_save_tensors
from ..images import ImageLike
from .common import augment, pick, subject_tensor

TEMPLATES = ("a photo of {}", "a picture of {}", "a close-up photo of {}", "a good photo of {}",
             "a rendition of {}", "a cropped photo of {}", "a bright photo of {}")


@dataclass
class TextualInversionConfig:
    steps: int = 1000
    lr: float = 5e-3
    batch_size: int = 4
    token: str = "<subject>"
    seed: int = 0
    fit: str = "center-crop"
    templates: tuple = TEMPLATES


@dataclass
class TextualInversionResult:
    pipe: "object"  # the same pipeline, with the token registered
    token: str
    embedding: torch.Tensor
    losses: list

    def save(self, path) -> Path:
        return save_token_embeddings({self.token: self.embedding}, path)


def save_token_embeddings(tokens: dict[str, torch.Tensor], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors({k: v.detach().float() for k, v in tokens.items()}, path, metadata={"format": "suti-ti"})
    return path


def load_token_embeddings(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no textual-inversion file {path}")
    try:
        return load_file(str(path))
    except Exception as e:
        raise ValueError(f"cannot read textual-inversion file {path}: {e}") from e


def textual_inversion(pipe, images: list[ImageLike], init_word: str, config: TextualInversionConfig | None = None,
                      progress: bool = True) -> TextualInversionResult:
    cfg = config or TextualInversionConfig()
    base = pipe.cascade.stages[0]
    device = pipe.device
    g = torch.Generator().manual_seed(cfg.seed)
    subject = subject_tensor(images, base.image_size, cfg.fit)
    enc = pipe.text_encoder
    enc.add_tokens([cfg.token], init_from=init_word)
    init = enc.get_token_embedding(cfg.token) if hasattr(enc, "get_token_embedding") else None
    if init is None:
        raise RuntimeError("the text encoder does not expose its input embedding rows")
    vec = torch.nn.Parameter(init.detach().clone().float().to(device))
    opt = torch.optim.AdamW([vec], lr=cfg.lr, weight_decay=0.0)
    was = [p.requires_grad for p in base.parameters()]
    base.requires_grad_(False)
    losses = []
    try:
        bar = tqdm(range(cfg.steps), desc="textual inversion", disable=not progress)
        for _ in bar:
            idx = pick(len(subject), cfg.batch_size, g)
            x = augment(subject[idx], g).to(device)
            prompts = [cfg.templates[int(i)].format(cfg.token)
                       for i in torch.randint(0, len(cfg.templates), (len(x),), generator=g)]
            emb, mask = enc.encode(prompts, token_embeddings={cfg.token: vec})
            # No text dropout: a dropped row gives the embedding no gradient (Gal et al. train every row).
            loss = base.training_loss(x, emb.to(device), mask.to(device), drop_conditions=False)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        for p, r in zip(base.parameters(), was):
            p.requires_grad_(r)
    pipe.token_embeddings[cfg.token] = vec.detach()
    return TextualInversionResult(pipe=pipe, token=cfg.token, embedding=vec.detach(), losses=losses)
