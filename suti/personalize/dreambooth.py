"""DreamBooth (Ruiz et al. 2023) on the cascade's base stage.

Fine-tunes a copy of the base stage on the subject's images with the prompt "a {rare} {class}",
plus class-prior preservation: images the frozen model draws for "a {class}" are trained on with
their own prompt, so the class does not collapse onto the subject.
Only the changed stage weights are saved.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import atomic_write_text, load_stage, read_json, save_stage
from ..images import ImageLike
from .common import augment, pick, subject_tensor


@dataclass
class DreamBoothConfig:
    steps: int = 400
    lr: float = 5e-6
    batch_size: int = 4
    rare_token: str = "sks"
    prior_preservation: bool = True
    prior_weight: float = 1.0
    num_prior_images: int = 16
    prior_sampling_steps: int = 25
    prior_guidance: float = 5.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    fit: str = "center-crop"
    # The DreamBooth recipe (Ruiz et al. 2023; diffusers' train_dreambooth) always gives the instance and class
    # prompts: no classifier-free text dropout, so guidance's unconditional branch keeps the base model's prior.
    condition_dropout: bool = False


@dataclass
class DreamBoothResult:
    pipe: "object"  # SuTIPipeline with the fine-tuned base stage
    instance_prompt: str
    class_noun: str
    config: DreamBoothConfig
    losses: list

    def prompt(self, template: str) -> str:
        """Fill ``{subject}`` in a template with the learned identifier, e.g. "{subject} in the snow"."""
        return template.replace("{subject}", self.instance_prompt)

    def save_pretrained(self, folder) -> Path:
        folder = Path(folder)
        save_stage(self.pipe.cascade.stages[0], folder / "stage")
        meta = {"method": "dreambooth", "instance_prompt": self.instance_prompt, "class_noun": self.class_noun,
                "stage": self.pipe.cascade.stages[0].name, "config": asdict(self.config)}
        atomic_write_text(folder / "dreambooth.json", json.dumps(meta, indent=2))
        return folder


def load_dreambooth(pipe, folder):
    """A pipeline sharing ``pipe``'s text encoder and SR stages, with the saved fine-tuned base stage."""
    from ..cascade import Cascade
    from ..pipeline import SuTIPipeline

    folder = Path(folder)
    meta = read_json(folder / "dreambooth.json")
    stage = load_stage(folder / "stage", device=pipe.device)
    new = SuTIPipeline(Cascade([stage] + list(pipe.cascade.stages[1:])), pipe.text_encoder, pipe.config)
    new.instance_prompt = meta["instance_prompt"]
    return new


def dreambooth(pipe, images: list[ImageLike], class_noun: str, config: DreamBoothConfig | None = None,
               progress: bool = True) -> DreamBoothResult:
    from ..cascade import Cascade
    from ..pipeline import SuTIPipeline

    cfg = config or DreamBoothConfig()
    base = pipe.cascade.stages[0]
    device = pipe.device
    g = torch.Generator().manual_seed(cfg.seed)
    instance_prompt = f"a {cfg.rare_token} {class_noun}"
    class_prompt = f"a {class_noun}"
    subject = subject_tensor(images, base.image_size, cfg.fit)

    prior = None
    if cfg.prior_preservation and cfg.num_prior_images > 0:
        # Class images from the frozen model, drawn before any weight changes.
        prior = pipe([class_prompt], num_images=cfg.num_prior_images, steps=cfg.prior_sampling_steps,
                     guidance=cfg.prior_guidance, seed=cfg.seed, stop_at=0, output_type="pt").cpu()

    stage = copy.deepcopy(base).train()
    opt = torch.optim.AdamW(stage.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    inst_emb, inst_mask = pipe.encode_text([instance_prompt])
    cls_emb, cls_mask = pipe.encode_text([class_prompt])
    losses = []
    bar = tqdm(range(cfg.steps), desc="dreambooth", disable=not progress)
    for _ in bar:
        x = augment(subject[pick(len(subject), cfg.batch_size, g)], g).to(device)
        loss = stage.training_loss(x, inst_emb.expand(len(x), -1, -1), inst_mask.expand(len(x), -1), generator=None,
                                   drop_conditions=cfg.condition_dropout)
        if prior is not None:
            p = prior[pick(len(prior), cfg.batch_size, g)].to(device)
            loss = loss + cfg.prior_weight * stage.training_loss(p, cls_emb.expand(len(p), -1, -1),
                                                                 cls_mask.expand(len(p), -1),
                                                                 drop_conditions=cfg.condition_dropout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    stage.eval()
    new = SuTIPipeline(Cascade([stage] + list(pipe.cascade.stages[1:])), pipe.text_encoder, pipe.config)
    new.token_embeddings = dict(pipe.token_embeddings)
    return DreamBoothResult(pipe=new, instance_prompt=instance_prompt, class_noun=class_noun, config=cfg, losses=losses)
