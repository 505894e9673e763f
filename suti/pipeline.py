"""The user-facing pipeline: ``SuTIPipeline.from_pretrained(folder)`` then ``pipe(prompt, ...)`` -> PIL images.

    pipe = SuTIPipeline.from_pretrained("checkpoints/suti")
    images = pipe("a dog in the snow", subject_images=["a.jpg", "b.jpg", "c.jpg"],
                  subject_texts="a photo of my dog", num_images=4, guidance=5.0, steps=50, seed=0)

With no exemplars it is plain text-to-image. With ``retrieve_from=db`` (a ``retrieval.PairsDatabase``)
it retrieves ``k`` exemplar pairs by the prompt (Re-Imagen mode). The base stage reads exemplars; SR
stages stay text-conditioned unless their config enables context attention.
"""
from __future__ import annotations

import secrets
import warnings
from pathlib import Path
from typing import Sequence

import torch

from .cascade import Cascade, Stage, check_stage_chain, convert_to_context_stage
from .checkpoint import load_cascade, load_stage_config, read_json, save_cascade, save_stage
from .config import CascadeConfig
from .context import Exemplars
from .images import ImageLike, load_image_tensor, tensor_to_pil
from .sampling import Guidance

MAX_EXEMPLARS = 5


class SuTIPipeline:
    def __init__(self, cascade: Cascade, text_encoder, config: CascadeConfig | None = None):
        self.cascade = cascade
        self.text_encoder = text_encoder
        self.config = config or CascadeConfig(text_encoder=getattr(text_encoder, "name_or_path", "text_encoder"),
                                              stages=tuple(cascade.names))
        self.token_embeddings: dict[str, torch.Tensor] = {}  # Textual Inversion tokens
        for stage in cascade.stages:
            if stage.config.unet.text_embed_dim != text_encoder.dim:
                raise ValueError(f"stage {stage.name!r} expects {stage.config.unet.text_embed_dim}-d text embeddings "
                                 f"but the text encoder gives {text_encoder.dim}-d")

    # -- loading and saving --------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder, device="cpu", dtype: torch.dtype | None = None, stages: list[str] | None = None,
                        text_encoder=None, local_files_only: bool | None = None) -> "SuTIPipeline":
        """Load a cascade folder (``cascade.json`` + one folder per stage). The text encoder is the
        folder's ``text_encoder/`` if present, else the hub name or path in ``cascade.json``."""
        from .text import TextEncoder

        folder = Path(folder)
        if not (folder / "cascade.json").is_file():
            raise FileNotFoundError(f"{folder} is not a SuTI checkpoint folder (no cascade.json)")
        cascade, cfg = load_cascade(folder, device, dtype, stages)
        if text_encoder is None:
            ref = Path(cfg.text_encoder)
            local = ref if ref.is_absolute() else folder / ref
            source = str(local) if local.exists() else cfg.text_encoder
            text_encoder = TextEncoder.from_pretrained(source, max_length=cfg.text_max_length, device=device,
                                                       local_files_only=local_files_only)
        pipe = cls(cascade, text_encoder, cfg)
        ti = folder / "textual_inversion.safetensors"
        if ti.is_file():
            pipe.load_textual_inversion(ti)
        pipe.warn_if_untrained()
        return pipe

    def save_pretrained(self, folder, save_text_encoder: bool = True) -> Path:
        folder = Path(folder)
        cfg = self.config
        if save_text_encoder:
            self.text_encoder.save_pretrained(folder / "text_encoder")
            cfg = CascadeConfig(text_encoder="text_encoder", text_max_length=cfg.text_max_length, stages=cfg.stages)
        save_cascade(self.cascade, cfg, folder)
        if self.token_embeddings:
            self.save_textual_inversion(folder / "textual_inversion.safetensors")
        return folder

    @classmethod
    def from_text_to_image(cls, source, context_levels: tuple | None = None, middle: bool = True,
                           **load_kw) -> tuple["SuTIPipeline", dict]:
        """SuTI conversion of a text-to-image pipeline (or folder): the base stage gains zero-initialised
        context attention, so outputs are unchanged until trained. Returns (pipeline, growth report)."""
        pipe = source if isinstance(source, SuTIPipeline) else cls.from_pretrained(source, **load_kw)
        base = pipe.cascade.stages[0]
        new_base, report = convert_to_context_stage(base, context_levels, middle)
        stages = [new_base] + list(pipe.cascade.stages[1:])
        out = cls(Cascade(stages), pipe.text_encoder, pipe.config)
        out.token_embeddings = dict(pipe.token_embeddings)
        return out, report

    def to(self, device=None, dtype=None) -> "SuTIPipeline":
        self.cascade.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.cascade.parameters()).device

    def warn_if_untrained(self) -> list[str]:
        """Zero-initialised output layers mean a stage never trained: its samples are flat noise
        (imagen-pytorch #347). Say so instead of letting the user guess."""
        untrained = [s.name for s in self.cascade.stages if not bool(s.unet.out[-1].weight.detach().any())]
        if untrained:
            warnings.warn(f"stages {untrained} have never been trained (zero output layer): their samples will be "
                          f"meaningless noise", stacklevel=2)
        return untrained

    # -- textual inversion ---------------------------------------------------------------------
    def load_textual_inversion(self, path) -> list[str]:
        from .personalize.textual_inversion import load_token_embeddings

        tokens = load_token_embeddings(path)
        vocab = self.text_encoder.tokenizer.get_vocab()
        new = [t for t in tokens if t not in vocab]  # a saved text encoder may already carry them
        if new:
            self.text_encoder.add_tokens(new)
        self.token_embeddings.update({k: v.to(self.device) for k, v in tokens.items()})
        return list(tokens)

    def save_textual_inversion(self, path) -> Path:
        from .personalize.textual_inversion import save_token_embeddings

        return save_token_embeddings(self.token_embeddings, path)

    # -- conditioning --------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = list(texts)
        with torch.no_grad():
            if self.token_embeddings:
                emb, mask = self.text_encoder.encode(texts, token_embeddings=self.token_embeddings)
            else:
                emb, mask = self.text_encoder.encode(texts)
        return emb.to(self.device), mask.to(self.device)

    def prepare_exemplars(self, images: Sequence[ImageLike], texts: Sequence[str] | str | None, size: int,
                          fit: str = "center-crop") -> Exemplars:
        """K exemplar (image, text) pairs for one prompt, as a batch of one."""
        images = list(images)
        if not 1 <= len(images) <= MAX_EXEMPLARS:
            raise ValueError(f"subject_images: give 1 to {MAX_EXEMPLARS} images, got {len(images)}")
        if texts is None or isinstance(texts, str):
            texts = [texts or ""] * len(images)
        texts = list(texts)
        if len(texts) != len(images):
            raise ValueError(f"subject_texts has {len(texts)} entries for {len(images)} subject_images")
        pixels = torch.stack([load_image_tensor(im, size, fit, name=None if isinstance(im, (str, Path)) else
                                                f"subject_images[{i}]") for i, im in enumerate(images)])
        pixels = pixels[None].to(self.device)
        emb, mask = self.encode_text(texts)
        return Exemplars(images=pixels, text_emb=emb[None], text_mask=mask[None],
                         mask=torch.ones(1, len(images), dtype=torch.bool, device=self.device))

    def retrieve_exemplars(self, db, prompt: str, k: int = 3):
        """Re-Imagen mode: the k nearest (image, caption) pairs to the prompt in a PairsDatabase."""
        records = db.search_text(prompt, k=k)
        if not records:
            raise ValueError(f"retrieval database returned no records for {prompt!r}")
        return [db.load_image(r) for r in records], [r.get("caption") or "" for r in records], records

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], subject_images: Sequence[ImageLike] | None = None,
                 subject_texts: Sequence[str] | str | None = None, num_images: int = 1, guidance: float | dict = 5.0,
                 guidance_mode: str | None = None, context_guidance: float | None = None, text_ratio: float = 0.5,
                 steps: int | dict = 50, sampler: str = "ddim", eta: float = 0.0, seed: int | None = None,
                 threshold: str = "dynamic", start_at=None, stop_at=None, fit: str = "center-crop",
                 retrieve_from=None, k: int = 3, cache_context: bool = True, aug_level: float | dict | None = None,
                 progress: bool = False, output_type: str = "pil", callback=None):
        """Generate ``num_images`` per prompt. Returns a list of PIL images (prompt-major order), or the
        tensor in [-1, 1] with ``output_type="pt"``.

        ``guidance``, ``steps`` and ``aug_level`` (the SR stages' noise-conditioning level; default: each
        stage config's ``noise_aug_sample``) take one value or a dict keyed by stage name.
        ``callback(stage_name, step, steps)`` is called after every sampler step (progress, cancellation: raise
        from it to stop)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt is empty")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if retrieve_from is not None and subject_images is not None:
            raise ValueError("give either subject_images or retrieve_from, not both")
        self.retrieved = None
        if retrieve_from is not None:
            if len(prompts) != 1:
                raise ValueError("retrieve_from works with one prompt at a time")
            subject_images, subject_texts, self.retrieved = self.retrieve_exemplars(retrieve_from, prompts[0], k)

        emb, mask = self.encode_text(prompts)
        emb, mask = emb.repeat_interleave(num_images, 0), mask.repeat_interleave(num_images, 0)
        exemplars = None
        if subject_images is not None:
            ctx_stages = [s for s in self.cascade.stages if s.uses_context]
            if not ctx_stages:
                raise ValueError("this checkpoint has no context attention (text-to-image only); convert it with "
                                 "SuTIPipeline.from_text_to_image and train it to use subject_images")
            size = max(s.image_size for s in ctx_stages)
            # One row: the stages encode the subject once and share its keys/values across every image.
            exemplars = self.prepare_exemplars(subject_images, subject_texts, size, fit)

        generator = torch.Generator(device=self.device)
        # No seed: a fresh one from the OS, leaving torch's global RNG as the caller set it.
        generator.manual_seed(int(seed) if seed is not None else secrets.randbits(63))
        if guidance_mode is None:  # SuTI's interleaved guidance with a subject; plain text CFG without
            guidance_mode = "interleaved" if exemplars is not None else "text"
        make = lambda scale: Guidance(scale=scale, mode=guidance_mode if exemplars is not None else "text",  # noqa: E731
                                      context_scale=context_guidance, text_ratio=text_ratio)
        g = {name: make(v) for name, v in guidance.items()} if isinstance(guidance, dict) else make(guidance)
        images = self.cascade.sample(emb, mask, exemplars=exemplars, start_at=start_at, stop_at=stop_at,
                                     guidance=g, steps=steps, sampler=sampler, eta=eta, threshold=threshold,
                                     generator=generator, cache_context=cache_context, aug_level=aug_level,
                                     progress=progress, callback=callback)
        return images if output_type == "pt" else tensor_to_pil(images)


def new_pipeline(text_encoder, stage_configs, text_max_length: int | None = None) -> SuTIPipeline:
    """A freshly initialised pipeline from stage configs (e.g. ``suti.presets.preset``)."""
    stages = [Stage(c) for c in stage_configs]
    cfg = CascadeConfig(text_encoder=getattr(text_encoder, "name_or_path", "text_encoder"),
                        text_max_length=text_max_length or getattr(text_encoder, "max_length", 128),
                        stages=tuple(s.name for s in stages))
    return SuTIPipeline(Cascade(stages), text_encoder, cfg)


def save_stage_into(pipe_folder, stage: Stage) -> None:
    """Replace one stage of a saved pipeline (each stage trains and saves on its own). Refused, leaving
    the folder as it was, when the stage does not fit the others (sizes, text embedding width)."""
    folder = Path(pipe_folder)
    names = list(CascadeConfig.from_dict(read_json(folder / "cascade.json")).stages)
    if stage.name not in names:
        raise ValueError(f"{folder} has no stage {stage.name!r}; stages: {names}")
    old = load_stage_config(folder / stage.name)
    configs = [stage.config if n == stage.name else load_stage_config(folder / n) for n in names]
    try:
        check_stage_chain(configs)
        if stage.config.unet.text_embed_dim != old.unet.text_embed_dim:
            raise ValueError(f"it reads {stage.config.unet.text_embed_dim}-d text embeddings, the checkpoint's "
                             f"text encoder gives {old.unet.text_embed_dim}-d")
    except ValueError as e:
        raise ValueError(f"stage {stage.name!r} does not fit {folder}: {e}") from e
    save_stage(stage, folder / stage.name)
