"""SuTI-IF stage folders. The IF weights are never written: the folder names its base model.

    <stage>/config.json           kind "suti-if", the base model (hub id or folder) and the fingerprint of
                                  its U-Net weights, the diffusers U-Net config, context placement, schedule
    <stage>/context.safetensors   the new layers only (context attention) + the empty-prompt text embedding
    <stage>/unet.safetensors      only when the whole U-Net trains (``train_unet: true``)

A cascade folder holds these stage folders beside the usual ``cascade.json`` (``suti.checkpoint``).
Loading refuses a base whose weights fingerprint differs from the one recorded. DeepFloyd IF's licence
allows non-commercial research only: users fetch the weights themselves from the hub.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from retrieval.atomic import atomic_path, atomic_write_json

from . import require_diffusers
from .stage import KIND, IFStage, IFStageConfig, new_if_stage

CONFIG_NAME = "config.json"
CONTEXT_WEIGHTS = "context.safetensors"
UNET_WEIGHTS = "unet.safetensors"
FORMAT_VERSION = 1
_SAMPLES_PER_TENSOR = 256


def weights_fingerprint(unet: torch.nn.Module) -> str:
    """A short hash of a U-Net's weights: every tensor's name and shape, and 256 evenly spaced values of
    each, rounded to float16 so the fp32 and fp16 files of one checkpoint agree. Cheap at 4.3B parameters."""
    h = hashlib.sha256()
    for name, t in sorted(unet.state_dict().items()):
        if t.is_meta:
            raise ValueError("cannot fingerprint weights on the meta device")
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, min(_SAMPLES_PER_TENSOR, flat.numel())).round().long()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(flat[idx.to(flat.device)].to("cpu", torch.float16).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def is_if_stage_folder(folder) -> bool:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, json.JSONDecodeError):
        return False


def _resolve_source(source: str, relative_to: Path | None) -> str:
    """A base given as a relative folder is looked up beside the stage folder first."""
    p = Path(source)
    if relative_to is not None and not p.is_absolute() and (relative_to / p).exists():
        return str(relative_to / p)
    return str(source)


def load_base_unet(source, subfolder: str | None = "unet", dtype: torch.dtype | None = None,
                   local_files_only: bool | None = None, variant: str | None = None):
    """IF's ``UNet2DConditionModel`` from a hub id (e.g. ``DeepFloyd/IF-I-XL-v1.0``) or a local folder (a
    pipeline folder with ``unet/``, or the U-Net folder itself). ``variant="fp16"`` reads IF's half-size
    files; the fingerprint is the same for both."""
    require_diffusers()
    from diffusers import UNet2DConditionModel

    source = str(source)
    local = Path(source)
    if local.is_dir() and subfolder and not (local / subfolder).is_dir() and (local / "config.json").is_file():
        subfolder = None  # the folder is the U-Net folder itself
    kw = {"local_files_only": local_files_only} if local_files_only is not None else {}
    if variant is not None:
        kw["variant"] = variant
    try:
        return UNet2DConditionModel.from_pretrained(source, subfolder=subfolder, torch_dtype=dtype, **kw)
    except (OSError, ValueError) as e:
        raise OSError(f"cannot load the IF U-Net from {source!r} (subfolder {subfolder!r}): {e}. IF's weights are "
                      f"gated on the hub: accept the licence on the model page and log in, or give a local "
                      f"folder") from e


def load_scheduler_config(source, local_files_only: bool | None = None) -> dict:
    """The base model's ``scheduler/scheduler_config.json`` if it has one, else IF's defaults."""
    from .schedule import IF_SCHEDULER_DEFAULTS

    local = Path(str(source)) / "scheduler" / "scheduler_config.json"
    if local.is_file():
        cfg = json.loads(local.read_text(encoding="utf-8"))
    else:
        try:
            from diffusers import DDPMScheduler

            kw = {"local_files_only": local_files_only} if local_files_only is not None else {}
            cfg = dict(DDPMScheduler.load_config(str(source), subfolder="scheduler", **kw))
        except Exception:  # no scheduler beside the U-Net: IF's published settings
            cfg = {}
    keep = set(IF_SCHEDULER_DEFAULTS)
    return {**IF_SCHEDULER_DEFAULTS, **{k: v for k, v in cfg.items() if k in keep}}


def from_if(source, *, null_text_emb: torch.Tensor, name: str = "base", placement=("down-1", "mid", "up0"),
            subfolder: str | None = "unet", lowres_size: int | None = None, dtype: torch.dtype | None = None,
            local_files_only: bool | None = None, variant: str | None = None, **stage_kw) -> IFStage:
    """A SuTI-IF stage on pretrained IF weights: the base U-Net (fingerprinted as loaded) plus fresh
    zero-initialised context layers, so its outputs equal IF's until trained."""
    unet = load_base_unet(source, subfolder, local_files_only=local_files_only, variant=variant)
    fingerprint = weights_fingerprint(unet)
    stage = new_if_stage(unet, name=name, null_text_emb=null_text_emb, placement=placement, base_model=str(source),
                         base_fingerprint=fingerprint, scheduler=load_scheduler_config(source, local_files_only),
                         lowres_size=lowres_size, **stage_kw)
    stage.config.base_subfolder = subfolder
    return stage if dtype is None else stage.to(dtype)


def save_if_stage(stage: IFStage, folder) -> Path:
    """Write the stage folder (new layers only, unless the whole U-Net was trained). The files go to a
    fresh sibling folder that then replaces ``folder`` whole."""
    from safetensors.torch import save_file

    from ..checkpoint import swap_folder

    if not stage.config.base_fingerprint:
        raise ValueError(f"IF stage {stage.name!r} has no base fingerprint; build it with from_if so a load can "
                         f"check its base")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {f"context_attn.{k}": v for k, v in stage.unet.context_attn.state_dict().items()}
    tensors["null_text_emb"] = stage.null_text_emb
    meta = {"format": KIND, "version": str(FORMAT_VERSION)}
    with atomic_path(tmp / CONTEXT_WEIGHTS) as p:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(p), metadata=meta)
    if stage.config.train_unet:
        with atomic_path(tmp / UNET_WEIGHTS) as p:
            save_file({k: v.detach().contiguous().cpu() for k, v in stage.unet.unet.state_dict().items()}, str(p),
                      metadata=meta)
    atomic_write_json(tmp / CONFIG_NAME, {"format_version": FORMAT_VERSION, **stage.config.to_dict()})
    return swap_folder(tmp, folder)


def load_if_stage(folder, device="cpu", dtype: torch.dtype | None = None, base=None,
                  local_files_only: bool | None = None, variant: str | None = None) -> IFStage:
    """Load a SuTI-IF stage folder onto its base model (``base`` overrides the recorded hub id or folder,
    e.g. a local copy). Refuses a base whose weights fingerprint differs from the recorded one."""
    from ..checkpoint import load_tensors, read_json

    folder = Path(folder)
    d = read_json(folder / CONFIG_NAME)
    if d.get("kind") != KIND:
        raise ValueError(f"{folder / CONFIG_NAME} is not a SuTI-IF stage config (kind {d.get('kind')!r})")
    try:
        cfg = IFStageConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{folder / CONFIG_NAME} is not a valid SuTI-IF stage config: {e}") from e
    source = _resolve_source(str(base if base is not None else cfg.base_model), folder)
    unet = load_base_unet(source, cfg.base_subfolder, local_files_only=local_files_only, variant=variant)
    found = weights_fingerprint(unet)
    if found != cfg.base_fingerprint:
        raise ValueError(f"{folder}: the base model {source!r} has weights fingerprint {found}, but this stage was "
                         f"trained on {cfg.base_model!r} with fingerprint {cfg.base_fingerprint}; load it on the "
                         f"same base weights (pass base=... to point at them)")
    if cfg.train_unet and (folder / UNET_WEIGHTS).is_file():  # absent until the whole U-Net was trained and saved
        _load_strict(unet, load_tensors(folder / UNET_WEIGHTS), folder / UNET_WEIGHTS)
    weights = load_tensors(folder / CONTEXT_WEIGHTS)
    if "null_text_emb" not in weights:
        raise ValueError(f"{folder / CONTEXT_WEIGHTS} lacks 'null_text_emb'")
    stage = IFStage(cfg, unet, null_text_emb=weights.pop("null_text_emb"))
    ctx = {k[len("context_attn."):]: v for k, v in weights.items() if k.startswith("context_attn.")}
    extra = [k for k in weights if not k.startswith("context_attn.")]
    if extra:
        raise ValueError(f"{folder / CONTEXT_WEIGHTS}: unexpected tensors {extra[:5]}")
    _load_strict(stage.unet.context_attn, ctx, folder / CONTEXT_WEIGHTS)
    stage = stage.to(device)
    if dtype is not None:
        stage = stage.to(dtype)
    return stage.eval()


def _load_strict(module: torch.nn.Module, weights: dict, path: Path) -> None:
    from ..checkpoint import load_weights_strict  # checkpoint dispatches to this module: import late

    load_weights_strict(module, weights, path)
