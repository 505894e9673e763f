"""``IFStage``: a cascade stage whose U-Net is DeepFloyd IF's diffusers ``UNet2DConditionModel``.

It has the project ``Stage`` interface (``config.name``, ``config.unet.{image_size, lowres_cond,
text_embed_dim}``, ``config.lowres_size``, ``uses_context``, ``sample``, ``training_loss``), so it chains
in a ``Cascade`` with the project's own stages in either order. It does no file I/O (see ``files``).

Text. IF reads the full T5 sequence with no attention mask (as ``IFPipeline`` calls it), so rows with
text are passed as given; rows whose text is dropped (classifier-free guidance) or empty get the
stage's ``null_text_emb``, the encoder's embedding of the empty prompt "" (IF's negative prompt).

Sampling runs the project's samplers over IF's discrete schedule through ``schedule.DiscreteSchedule``;
guidance is the project's ``guided_denoiser`` (text / context / joint / interleaved), never
``IFPipeline``'s, which would hand the exemplars to the unconditional branch too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import diffusion as D
from ..cascade import resize
from ..config import DiffusionConfig
from ..context import Exemplars, concat_context, drop_context
from ..sampling import Guidance, get_sampler, guided_denoiser
from .context import DEFAULT_PLACEMENT, IFContextUNet, IFExemplarCache, flatten_exemplar_features
from .schedule import IF_SCHEDULER_DEFAULTS, DiscreteSchedule, aug_timestep

KIND = "suti-if"
IMAGE_CHANNELS = 3


@dataclass
class IFUNetView:
    """The part of a stage config that cascades and pipelines read, derived from the diffusers config."""

    image_size: int
    lowres_cond: bool
    text_embed_dim: int
    uses_context: bool
    in_channels: int = IMAGE_CHANNELS
    out_channels: int = IMAGE_CHANNELS


@dataclass
class IFStageConfig:
    kind: ClassVar[str] = KIND  # how suti.checkpoint tells this stage kind from the project's own
    name: str = "base"
    base_model: str = ""  # hub id or local folder of the IF model whose U-Net this stage wraps
    base_subfolder: str | None = "unet"
    base_fingerprint: str = ""  # suti.if_backbone.files.weights_fingerprint of the base U-Net
    unet_config: dict = field(default_factory=dict)  # the base U-Net's diffusers config
    context_placement: tuple = ()  # () = text-to-image only; e.g. DEFAULT_PLACEMENT
    context_head_dim: int = 64
    scheduler: dict = field(default_factory=lambda: dict(IF_SCHEDULER_DEFAULTS))
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(prediction="eps",
                                                                               noise_aug_sample=0.25))
    lowres_size: int | None = None  # set for super-resolution stages (IF-II: 64)
    exemplar_timestep: int = 0  # IF's cleanest step: exemplars are encoded there
    # False (default, as IP-Adapter): the IF U-Net is frozen and only the new layers train and are saved.
    # True: the whole U-Net trains and a save writes it too (unet.safetensors; IF's licence covers it).
    train_unet: bool = False
    gradient_checkpointing: bool = False  # diffusers' checkpointing of the U-Net's resnets (training memory)

    def __post_init__(self):
        if isinstance(self.diffusion, dict):
            self.diffusion = DiffusionConfig(**self.diffusion)
        self.context_placement = tuple(self.context_placement)
        if self.diffusion.prediction != "eps":
            raise ValueError(f"IF stage {self.name!r}: IF predicts epsilon; diffusion.prediction must be 'eps'")
        if self.unet_config and (self.lowres_size is not None) != self.unet.lowres_cond:
            raise ValueError(f"IF stage {self.name!r}: lowres_size is set iff the U-Net takes a low-res image "
                             f"(in_channels {self.unet_config.get('in_channels')})")

    @property
    def unet(self) -> IFUNetView:
        c = self.unet_config
        size = c.get("sample_size")
        size = size[0] if isinstance(size, (list, tuple)) else size
        return IFUNetView(image_size=int(size), lowres_cond=int(c.get("in_channels", 3)) == 2 * IMAGE_CHANNELS,
                          text_embed_dim=int(c.get("encoder_hid_dim") or c.get("cross_attention_dim")),
                          uses_context=bool(self.context_placement))

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["kind"] = KIND
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "IFStageConfig":
        d = {k: v for k, v in d.items() if k not in ("kind", "format_version")}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"IF stage config: unknown keys {unknown}; valid keys are {sorted(known)}")
        return cls(**d)


def unet_config_of(unet) -> dict:
    """The diffusers config without its private keys (``_name_or_path`` would record a local path)."""
    return {k: v for k, v in unet.config.items() if not k.startswith("_")}


class IFStage(nn.Module):
    def __init__(self, config: IFStageConfig, unet, null_text_emb: torch.Tensor | None = None):
        super().__init__()
        if not config.unet_config:
            config = dataclasses.replace(config, unet_config=unet_config_of(unet))
        self.config = config
        self.unet = IFContextUNet(unet, config.context_placement, head_dim=config.context_head_dim,
                                  num_groups=int(unet.config.norm_num_groups or 32))
        self.config.context_placement = self.unet.placement  # resolved names ("down-1" -> "down2")
        self.schedule = DiscreteSchedule.from_config(config.scheduler)
        if null_text_emb is None:
            raise ValueError(f"IF stage {config.name!r} needs null_text_emb: the text encoder's embedding of the "
                             f"empty prompt '' (IF's negative prompt), shape (1, L, {config.unet.text_embed_dim})")
        if null_text_emb.ndim == 2:
            null_text_emb = null_text_emb[None]
        if null_text_emb.shape[0] != 1 or null_text_emb.shape[-1] != config.unet.text_embed_dim:
            raise ValueError(f"null_text_emb must be (1, L, {config.unet.text_embed_dim}), got "
                             f"{tuple(null_text_emb.shape)}")
        self.register_buffer("null_text_emb", null_text_emb.detach().clone())
        self.unet.unet.requires_grad_(bool(config.train_unet))
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def uses_context(self) -> bool:
        return bool(self.config.context_placement)

    # -- training modes -----------------------------------------------------------------------------
    def train_context_only(self) -> "IFStage":
        """Freeze the IF U-Net, train the new context layers alone (the default, as IP-Adapter does)."""
        self.unet.unet.requires_grad_(False)
        self.unet.context_attn.requires_grad_(True)
        self.config.train_unet = False
        return self

    def train_whole_unet(self) -> "IFStage":
        self.unet.requires_grad_(True)
        self.config.train_unet = True  # a save now carries the U-Net too
        return self

    # -- conditioning --------------------------------------------------------------------------------
    def condition_text(self, text_emb: torch.Tensor, text_mask: torch.Tensor,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
        """IF's encoder_hidden_states: the embeddings as given, ``null_text_emb`` for rows with no valid
        token or ``keep`` False."""
        null = self.null_text_emb.to(text_emb.dtype)
        if text_emb.shape[1] != null.shape[1]:
            raise ValueError(f"IF stage {self.name!r}: text embeddings have {text_emb.shape[1]} tokens, the stage's "
                             f"null (empty-prompt) embedding {null.shape[1]}; encode with that max_length")
        has = text_mask.bool().any(dim=1)
        if keep is not None:
            has = has & keep.to(has.device)
        return torch.where(has[:, None, None], text_emb, null.expand_as(text_emb))

    def upsample_lowres(self, lowres: torch.Tensor) -> torch.Tensor:
        """IF-II's low-res conditioning: bilinear upsampling to this stage's size (as IFSuperResolutionPipeline)."""
        s = self.image_size
        if lowres.shape[-2:] == (s, s):
            return lowres
        return F.interpolate(lowres, (s, s), mode="bilinear", align_corners=True)

    def lowres_from(self, images: torch.Tensor) -> torch.Tensor:
        """Training input of an SR stage: images down to ``lowres_size`` (antialiased), then IF's upsampling."""
        return self.upsample_lowres(resize(images, self.config.lowres_size))

    def _model_input(self, x, lowres_in):
        return x if lowres_in is None else torch.cat([x, lowres_in.to(x.dtype)], dim=1)

    def _encode_exemplars(self, ex: Exemplars) -> dict:
        """Encoder reuse: each exemplar with its own text at IF's cleanest step through the U-Net's own
        conv_in, embeddings, down blocks and mid block."""
        b, k = ex.images.shape[:2]
        flat = lambda v: v.reshape(b * k, *v.shape[2:])  # noqa: E731
        images = resize(flat(ex.images), self.image_size).to(ex.images.dtype)
        text = self.condition_text(flat(ex.text_emb), flat(ex.text_mask))
        steps = torch.full((b * k,), self.config.exemplar_timestep, dtype=torch.long, device=images.device)
        class_labels = None
        if self.config.unet.lowres_cond:  # clean low-res view of the exemplar itself, noise level 0
            images = self._model_input(images, self.lowres_from(images))
            class_labels = torch.zeros_like(steps)
        feats = self.unet.encoder_features(images, steps, text, class_labels)
        return flatten_exemplar_features(feats, b, k, ex.mask)

    def _lowres_input(self, lowres, level, b, dev, dtype, generator, train: bool):
        """(noise-augmented low-res input, noise-level timesteps) of an SR stage."""
        n = self.schedule.num_train_timesteps
        cfg = self.config.diffusion
        if train:
            k_aug = torch.randint(0, int(cfg.noise_aug_max * n) + 1, (b,), device=dev, generator=generator).clamp(max=n - 1)
        else:
            k_aug = aug_timestep(torch.full((b,), float(level), device=dev), n)
        aug_noise = torch.randn(lowres.shape, generator=generator, device=dev, dtype=dtype)
        return self.schedule.add_noise(lowres, aug_noise, k_aug), k_aug

    # -- training ------------------------------------------------------------------------------------
    def training_loss(self, x0: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor, *,
                      lowres: torch.Tensor | None = None, exemplars: Exemplars | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """IF's objective: uniform discrete timestep, MSE on epsilon (the variance channels are left as
        trained). Text and context are dropped in the combinations guidance uses (``diffusion.drop_masks``)."""
        cfg = self.config.diffusion
        b, dev = x0.shape[0], x0.device
        k = self.schedule.sample_timesteps(b, dev, generator)
        noise = torch.randn(x0.shape, device=dev, generator=generator, dtype=x0.dtype)
        x_t = self.schedule.add_noise(x0, noise, k)
        has_context = exemplars is not None and self.uses_context
        keep_text, keep_context = D.drop_masks(b, cfg, dev, generator, has_context=has_context)
        text = self.condition_text(text_emb.to(x0.dtype), text_mask, keep_text)
        lowres_in, class_labels = None, None
        if self.config.unet.lowres_cond:
            lowres = self.lowres_from(x0) if lowres is None else self.upsample_lowres(lowres)
            lowres_in, class_labels = self._lowres_input(lowres, None, b, dev, x0.dtype, generator, train=True)
        context = None
        if has_context:
            context = drop_context(self.unet.project_context(self._encode_exemplars(exemplars)), keep_context)
        out = self.unet(self._model_input(x_t, lowres_in), k, text, class_labels, context=context)
        eps = out[:, :IMAGE_CHANNELS]
        if cfg.loss == "l1":
            return F.l1_loss(eps.float(), noise.float())
        return F.mse_loss(eps.float(), noise.float())

    # -- sampling ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, text_emb: torch.Tensor, text_mask: torch.Tensor, *, lowres: torch.Tensor | None = None,
               exemplars: Exemplars | None = None, guidance: Guidance | None = None, steps: int = 50,
               sampler: str = "ddpm", eta: float = 0.0, threshold: str = "dynamic",
               generator: torch.Generator | None = None, cache_context: bool = True, noise: torch.Tensor | None = None,
               aug_level: float | None = None, progress=None, callback=None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1]. ``threshold`` is IF's (dynamic: ratio and max value from the
        scheduler config). ``aug_level`` in [0, 1] is IF-II's noise level / 1000 (default 0.25, IF's 250).
        ``callback(step, x, x0)`` is called after every sampler step."""
        cfg = self.config.diffusion
        guidance = guidance or Guidance()
        b, dev = text_emb.shape[0], text_emb.device
        dtype = next(self.unet.parameters()).dtype
        shape = (b, IMAGE_CHANNELS, self.image_size, self.image_size)
        x_T = noise if noise is not None else torch.randn(shape, generator=generator, device=dev, dtype=dtype)

        lowres_in, class_labels = None, None
        if self.config.unet.lowres_cond:
            if lowres is None:
                raise ValueError(f"stage {self.name!r} is super-resolution and needs a low-res image")
            level = cfg.noise_aug_sample if aug_level is None else aug_level
            if not 0.0 <= level <= 1.0:
                raise ValueError(f"aug_level must be in [0, 1], got {level}")
            up = self.upsample_lowres(lowres.to(dev, dtype))
            lowres_in, class_labels = self._lowres_input(up, level, b, dev, dtype, generator, train=False)

        cache = None
        if exemplars is not None and self.uses_context:
            ex = exemplars.to(dev, dtype)
            cache = IFExemplarCache(self.unet, lambda: self._encode_exemplars(ex), ex.images.shape[0], b,
                                    cache=cache_context)
        text = self.condition_text(text_emb.to(dev, dtype), text_mask.to(dev))
        null = self.null_text_emb.to(dev, dtype).expand_as(text)
        rows = torch.ones(b, dtype=torch.bool, device=dev)
        rep = lambda v, n: None if v is None else torch.cat([v] * n)  # noqa: E731

        def branches(x, t, names):
            n = len(names)
            k = self.schedule.timesteps(t, steps).to(dev)
            texts = torch.cat([null if name in ("no_text", "uncond") else text for name in names])
            context = None
            if cache is not None:
                kv = cache.projected()
                context = concat_context([drop_context(kv, rows if name in ("full", "no_text") else ~rows)
                                          for name in names])
            xs, ks = rep(x, n), rep(k, n)
            out = self.unet(self._model_input(xs, rep(lowres_in, n)), ks, texts, rep(class_labels, n), context=context)
            learned_variance[0] = out[:b, IMAGE_CHANNELS:]  # the "full" branch's, as IFPipeline takes the text branch's
            x0 = self.schedule.x0_from_eps(xs, out[:, :IMAGE_CHANNELS], ks)
            return list(x0.chunk(n))

        learned_variance = [None]

        def noise_std(step, t, s):
            """IF's learned_range variance of this step (the noise DDPM adds), from the U-Net's last 3 channels."""
            v = learned_variance[0]
            if v is None or v.shape[1] != IMAGE_CHANNELS:
                return None  # a 3-channel U-Net has no learned variance: the posterior's
            k, k_prev = self.schedule.timesteps(t, steps).to(dev), self.schedule.timesteps(s, steps).to(dev)
            return torch.exp(0.5 * self.schedule.learned_log_variance(v, k, k_prev))

        guided = guided_denoiser(branches, guidance, has_context=cache is not None)

        def denoise(x, t, step):  # IF's thresholding (its ratio and max value), after guidance as IF does
            return self.schedule.threshold(guided(x, t, step), threshold)

        return get_sampler(sampler)(denoise, x_T, steps, eta=eta, threshold="none", generator=generator,
                                    progress=progress, callback=callback, logsnr_fn=self.schedule.logsnr_fn(steps),
                                    **({"noise_std_fn": noise_std} if sampler in ("ddim", "ddpm") else {}))


def new_if_stage(unet, *, name: str = "base", null_text_emb: torch.Tensor, placement=DEFAULT_PLACEMENT,
                 base_model: str = "", base_fingerprint: str = "", scheduler: dict | None = None,
                 lowres_size: int | None = None, diffusion: DiffusionConfig | dict | None = None,
                 context_head_dim: int = 64, train_unet: bool = False, gradient_checkpointing: bool = False) -> IFStage:
    """An IF stage around an already built or loaded diffusers U-Net, with fresh (zero) context layers."""
    if diffusion is None:
        diffusion = DiffusionConfig(prediction="eps", noise_aug_sample=0.25)
    if lowres_size is None and int(unet.config.in_channels) == 2 * IMAGE_CHANNELS:
        lowres_size = 64
    cfg = IFStageConfig(name=name, base_model=str(base_model), base_fingerprint=base_fingerprint,
                        unet_config=unet_config_of(unet), context_placement=tuple(placement or ()),
                        context_head_dim=context_head_dim, scheduler={**IF_SCHEDULER_DEFAULTS, **(scheduler or {})},
                        diffusion=diffusion, lowres_size=lowres_size, train_unet=train_unet,
                        gradient_checkpointing=gradient_checkpointing)
    return IFStage(cfg, unet, null_text_emb=null_text_emb)
