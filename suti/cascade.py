"""Cascade stages: one U-Net + its diffusion settings each, chained base -> SR -> SR.

A ``Stage`` knows how to compute its training loss and how to sample; it does no file I/O
(``suti.checkpoint`` saves and loads). Images are tensors in [-1, 1] here; only the pipeline knows PIL.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from . import diffusion as D
from .config import StageConfig
from .context import ExemplarContext, Exemplars, concat_context, drop_context
from .sampling import Guidance, get_sampler, guided_denoiser
from .unet import EfficientUNet


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Area-preserving resize of (..., C, H, W) images to ``size`` (antialiased bicubic)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:]).float()
    out = F.interpolate(flat, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(-1, 1).to(images.dtype).reshape(*lead, *out.shape[-3:])


class Stage(nn.Module):
    def __init__(self, config: StageConfig, unet: EfficientUNet | None = None):
        super().__init__()
        self.config = config
        self.unet = unet if unet is not None else EfficientUNet(config.unet)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def image_size(self) -> int:
        return self.config.unet.image_size

    @property
    def uses_context(self) -> bool:
        return self.config.unet.uses_context

    def lowres_from(self, images: torch.Tensor) -> torch.Tensor:
        """The SR stage's conditioning: images down to ``lowres_size`` then back up to this stage's size."""
        return resize(resize(images, self.config.lowres_size), self.image_size)

    # -- training ------------------------------------------------------------------------------
    def training_loss(self, x0: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor, *,
                      lowres: torch.Tensor | None = None, exemplars: Exemplars | None = None,
                      generator: torch.Generator | None = None, drop_conditions: bool = True) -> torch.Tensor:
        """Diffusion loss on clean images ``x0`` (B,C,H,W) in [-1,1].

        SR stages derive ``lowres`` from x0 unless given, and noise-augment it at a random level.
        Conditions are dropped as ``suti.diffusion.drop_masks`` says: text alone, context alone, or both, so that
        every branch that guidance compares against is trained. ``drop_conditions=False`` keeps them all.
        """
        cfg = self.config.diffusion
        b, dev = x0.shape[0], x0.device
        t = torch.rand(b, device=dev, generator=generator)
        noise = torch.randn(x0.shape, device=dev, generator=generator, dtype=x0.dtype)
        logsnr = D.cosine_logsnr(t, cfg.logsnr_min, cfg.logsnr_max)
        x_t = D.q_sample(x0, logsnr, noise)
        has_context = exemplars is not None and self.uses_context
        keep_text, keep_context = D.drop_masks(b, cfg, dev, generator, has_context=has_context)
        if not drop_conditions:  # per-subject fine-tuning (DreamBooth, Textual Inversion) keeps every prompt
            keep_text, keep_context = torch.ones_like(keep_text), torch.ones_like(keep_context)
        text_mask = text_mask.bool() & keep_text[:, None]
        aug_level, lowres_in = None, None
        if self.config.unet.lowres_cond:
            lowres = self.lowres_from(x0) if lowres is None else lowres
            aug_level = D.sample_aug_level(b, cfg, dev, train=True, generator=generator)
            aug_noise = torch.randn(lowres.shape, device=dev, generator=generator, dtype=lowres.dtype)
            lowres_in = D.noise_augment(lowres, aug_level, cfg, aug_noise)
        context = None
        if has_context:
            feats = ExemplarContext(self.unet, exemplars, t=cfg.exemplar_t, lowres=self._exemplar_lowres(exemplars),
                                    batch=b).features()
            context = drop_context(feats, keep_context)
        out = self.unet(x_t, t, text_emb, text_mask, lowres=lowres_in, aug_level=aug_level, context=context)
        return D.diffusion_loss(out, x0, noise, logsnr, cfg)

    def _exemplar_lowres(self, ex: Exemplars):
        return self.lowres_from(ex.images) if self.config.unet.lowres_cond else None

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, text_emb: torch.Tensor, text_mask: torch.Tensor, *, lowres: torch.Tensor | None = None,
               exemplars: Exemplars | None = None, guidance: Guidance | None = None, steps: int = 50,
               sampler: str = "ddim", eta: float = 0.0, threshold: str = "dynamic",
               generator: torch.Generator | None = None, cache_context: bool = True, noise: torch.Tensor | None = None,
               aug_level: float | None = None, progress=None, callback=None) -> torch.Tensor:
        """Sample images (B,C,H,W) in [-1,1] for B text embeddings (and exemplars, for SuTI stages).
        ``aug_level`` overrides the config's fixed noise-conditioning level of an SR stage.
        ``callback(step, x, x0)`` is called after every sampler step."""
        cfg = self.config.diffusion
        guidance = guidance or Guidance()
        b, dev = text_emb.shape[0], text_emb.device
        dtype = next(self.unet.parameters()).dtype
        shape = (b, self.config.unet.out_channels, self.image_size, self.image_size)
        x_T = noise if noise is not None else torch.randn(shape, generator=generator, device=dev, dtype=dtype)

        level, aug_level, lowres_in = aug_level, None, None
        if self.config.unet.lowres_cond:
            if lowres is None:
                raise ValueError(f"stage {self.name!r} is super-resolution and needs a low-res image")
            lowres = resize(lowres.to(dev, dtype), self.image_size)
            if level is not None and not 0.0 <= level <= 1.0:
                raise ValueError(f"aug_level must be in [0, 1], got {level}")
            aug_level = (D.sample_aug_level(b, cfg, dev, train=False) if level is None
                         else torch.full((b,), float(level), device=dev))
            aug_noise = torch.randn(lowres.shape, generator=generator, device=dev, dtype=dtype)
            lowres_in = D.noise_augment(lowres, aug_level, cfg, aug_noise)

        ctx = None
        if exemplars is not None and self.uses_context:
            exemplars = dataclasses.replace(exemplars, images=resize(exemplars.images, self.image_size)).to(dev, dtype)
            ctx = ExemplarContext(self.unet, exemplars, t=cfg.exemplar_t, lowres=self._exemplar_lowres(exemplars),
                                  cache=cache_context, batch=b)
        text_mask = text_mask.bool().to(dev)
        text_emb = text_emb.to(dev, dtype)
        no_text = torch.zeros_like(text_mask)
        rows = torch.ones(b, dtype=torch.bool, device=dev)

        def branches(x, t, names):
            n = len(names)
            masks = [no_text if name in ("no_text", "uncond") else text_mask for name in names]
            context = None
            if ctx is not None:
                feats = ctx.features()
                context = concat_context([drop_context(feats, rows if name in ("full", "no_text") else ~rows)
                                          for name in names])
            rep = lambda v: None if v is None else torch.cat([v] * n)  # noqa: E731
            out = self.unet(rep(x), rep(t), rep(text_emb), torch.cat(masks), lowres=rep(lowres_in),
                            aug_level=rep(aug_level), context=context)
            x0 = D.x0_from_output(out, rep(x), D.cosine_logsnr(rep(t), cfg.logsnr_min, cfg.logsnr_max), cfg.prediction)
            return list(x0.chunk(n))

        denoise = guided_denoiser(branches, guidance, has_context=ctx is not None)
        t_start = D.cosine_t_from_logsnr(cfg.sampling_logsnr_min, cfg.logsnr_min, cfg.logsnr_max)
        return get_sampler(sampler)(denoise, x_T, steps, eta=eta, threshold=threshold, generator=generator,
                                    logsnr_min=cfg.logsnr_min, logsnr_max=cfg.logsnr_max, progress=progress,
                                    t_start=t_start, callback=callback)


def check_stage_chain(configs: list[StageConfig]) -> None:
    """Stages fit together: a base stage first, each SR stage's input size is the previous output size,
    and all read the same text embedding width (one text encoder serves the whole cascade)."""
    if not configs:
        raise ValueError("a cascade needs at least one stage")
    if configs[0].unet.lowres_cond:
        raise ValueError(f"the first stage {configs[0].name!r} must be a base (not super-resolution) stage")
    for prev, nxt in zip(configs, configs[1:]):
        if nxt.lowres_size != prev.image_size:
            raise ValueError(f"stage {nxt.name!r} expects {nxt.lowres_size}px input but "
                             f"{prev.name!r} makes {prev.image_size}px")
    dims = {c.name: c.unet.text_embed_dim for c in configs}
    if len(set(dims.values())) > 1:
        raise ValueError(f"stages read text embeddings of different widths {dims}; one text encoder serves all")


class Cascade(nn.Module):
    """Stages in order (base first). Each stage has its own config and weights and trains on its own."""

    def __init__(self, stages: list[Stage]):
        super().__init__()
        check_stage_chain([s.config for s in stages])
        self.stages = nn.ModuleList(stages)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages are {self.names}")

    def _index(self, name_or_idx, default):
        if name_or_idx is None:
            return default
        if isinstance(name_or_idx, int):
            return name_or_idx % len(self.stages)
        return self.names.index(self.stage(name_or_idx).name)

    @torch.no_grad()
    def sample(self, text_emb, text_mask, *, exemplars: Exemplars | None = None, start_at=None, stop_at=None,
               start_images: torch.Tensor | None = None, guidance: Guidance | dict | None = None, steps=50,
               sampler="ddim", eta=0.0, threshold="dynamic", generator=None, cache_context=True,
               aug_level=None, return_all=False, progress=None, callback=None):
        """Run stages ``start_at`` .. ``stop_at`` (names or indices, inclusive). ``start_images`` feeds a
        start stage other than the base. ``guidance``, ``steps`` and ``aug_level`` may be dicts keyed by
        stage name (a stage missing from the dict gets the dict's first value). ``callback(stage_name, step,
        steps)`` is called after every sampler step of every stage (progress bars, cancellation)."""
        i0, i1 = self._index(start_at, 0), self._index(stop_at, len(self.stages) - 1)
        if i0 > i1:
            raise ValueError(f"start_at={start_at!r} comes after stop_at={stop_at!r}")
        if i0 > 0 and start_images is None:
            raise ValueError(f"starting at stage {self.names[i0]!r} needs `start_images` from the stage before")
        images, outputs = start_images, {}
        for stage in list(self.stages)[i0:i1 + 1]:
            pick = lambda v: v.get(stage.name, next(iter(v.values()))) if isinstance(v, dict) else v  # noqa: E731
            images = stage.sample(
                text_emb, text_mask, lowres=images, exemplars=exemplars if stage.uses_context else None,
                guidance=pick(guidance), steps=pick(steps), sampler=sampler, eta=eta, threshold=threshold,
                generator=generator, cache_context=cache_context, aug_level=pick(aug_level),
                progress=f"{stage.name}" if progress else None,
                callback=None if callback is None else self._stage_callback(callback, stage.name, pick(steps)))
            outputs[stage.name] = images
        return outputs if return_all else images

    @staticmethod
    def _stage_callback(callback, name: str, steps: int):
        return lambda step, x, x0: callback(name, step, steps)


def convert_to_context_stage(stage: Stage, context_levels: tuple | None = None, middle: bool = True) -> tuple[Stage, dict]:
    """SuTI conversion: a copy of a text-to-image stage with zero-initialised context attention.

    Outputs are bitwise equal to the original until the new layers are trained. Returns the new stage
    and a report with the parameter growth.
    """
    from .presets import with_context

    new_cfg = with_context(stage.config, context_levels, middle)
    new = Stage(new_cfg).to(next(stage.parameters()).device)
    missing, unexpected = new.unet.load_state_dict(copy.deepcopy(stage.unet.state_dict()), strict=False)
    bad = [k for k in missing if "context_attn" not in k]
    if bad or unexpected:
        raise RuntimeError(f"conversion mismatch: missing {bad[:5]}, unexpected {list(unexpected)[:5]}")
    before, after = stage.unet.num_parameters(), new.unet.num_parameters()
    report = {"params_before": before, "params_after": after, "params_added": after - before,
              "growth": (after - before) / before}
    return new, report
