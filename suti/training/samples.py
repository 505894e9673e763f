"""Sample grids written during training: what the stage draws now, next to what it should draw.

- base text-to-image stage: one cell per prompt (config prompts, else the held batch's captions);
- super-resolution stage: rows of [low-res input, sample, target] from a held batch;
- in-context stage: rows of [exemplar 1..K, target, sample] from a held batch (with config prompts,
  the held exemplars are paired with those prompts instead, and the target cell is left blank).

Sampling runs inside ``torch.random.fork_rng`` with its own seeded generator, so writing a grid never
changes the training run's random state (exact resume does not depend on when grids were written).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image

from retrieval.atomic import atomic_path, atomic_write_json

from ..context import Exemplars
from ..images import make_grid, tensor_to_pil
from ..sampling import Guidance

log = logging.getLogger("suti.training")


def noise_score(images: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels ([-1,1] images). Clamped white noise scores
    about 0.9; natural images and flat colours score well under 0.2."""
    x = images.float().clamp(-1, 1)
    return float(((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()) / 2)


def _blank(size: int) -> Image.Image:
    return Image.new("RGB", (size, size), (255, 255, 255))


@torch.no_grad()
def render_samples(stage, text, spec, held: dict | None, device) -> tuple[Image.Image, dict]:
    """Sample with ``stage`` (EMA weights, usually) and tile the result. Returns (grid, info)."""
    size = stage.image_size
    guidance = Guidance(scale=spec.guidance, mode=spec.guidance_mode)
    kw = dict(guidance=guidance, steps=spec.steps, threshold=spec.threshold)
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        g = torch.Generator(device=device).manual_seed(spec.seed)
        was_training = stage.training
        stage.eval()
        try:
            if stage.uses_context:
                grid, info = _in_context(stage, text, spec, held, device, g, kw, size)
            elif stage.config.unet.lowres_cond:
                grid, info = _super_resolution(stage, text, held, device, g, kw)
            else:
                grid, info = _text_to_image(stage, text, spec, held, device, g, kw)
        finally:
            stage.train(was_training)
    return grid, info


def _text_to_image(stage, text, spec, held, device, g, kw):
    prompts = list(spec.prompts) or (list(held["captions"]) if held else [])
    if not prompts:
        raise ValueError("no sample prompts: set sample.prompts")
    prompts = [p for p in prompts for _ in range(spec.per_prompt)]
    emb, mask = text(prompts, device)
    images = stage.sample(emb, mask, generator=g, **kw)
    cols = spec.per_prompt if spec.per_prompt > 1 else None
    return make_grid(tensor_to_pil(images), cols=cols), {"prompts": prompts, "noise_score": noise_score(images)}


def _super_resolution(stage, text, held, device, g, kw):
    if not held:
        raise ValueError("a super-resolution sample grid needs a held batch")
    target = held["images"].to(device)
    emb, mask = text(list(held["captions"]), device)
    lowres = stage.lowres_from(target)
    images = stage.sample(emb, mask, lowres=lowres, generator=g, **kw)
    cells = []
    for lo, s, t in zip(tensor_to_pil(lowres), tensor_to_pil(images), tensor_to_pil(target)):
        cells += [lo, s, t]
    return make_grid(cells, cols=3), {"prompts": list(held["captions"]), "noise_score": noise_score(images),
                                      "columns": ["low-res input", "sample", "target"]}


def _in_context(stage, text, spec, held, device, g, kw, size):
    if not held:
        raise ValueError("an in-context sample grid needs a held batch (exemplars)")
    n = held["images"].shape[0]
    prompts = list(spec.prompts) or list(held["captions"])
    rows = [i % n for i in range(len(prompts))]
    ex_images = held["exemplar_images"][rows].to(device)
    ex_mask = held["exemplar_mask"][rows].to(device)
    ex_caps = [held["exemplar_captions"][r] for r in rows]
    ex_emb, ex_tmask = text.exemplars(ex_caps, ex_mask, device)
    exemplars = Exemplars(ex_images, ex_emb, ex_tmask, ex_mask)
    emb, mask = text(prompts, device)
    images = stage.sample(emb, mask, exemplars=exemplars, generator=g, **kw)
    k = ex_images.shape[1]
    cells = []
    for i, sample in enumerate(tensor_to_pil(images)):
        exs = tensor_to_pil(ex_images[i])
        cells += [exs[j] if ex_mask[i, j] else _blank(size) for j in range(k)]
        target = tensor_to_pil(held["images"][rows[i]])[0] if not spec.prompts else _blank(size)
        cells += [target, sample]
    return make_grid(cells, cols=k + 2), {"prompts": prompts, "noise_score": noise_score(images),
                                          "columns": [f"exemplar {j}" for j in range(k)] + ["target", "sample"]}


def save_grid(grid: Image.Image, info: dict, folder: Path, step: int) -> Path:
    """Write ``step-XXXXXXXX.png`` (+ a .json with prompts) atomically; warn when samples look like noise."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.png"
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    atomic_write_json(path.with_suffix(".json"), {"step": step, **info})
    if info.get("noise_score", 0.0) > 0.5:
        log.warning("samples at step %d look like pure noise (neighbour-difference score %.2f; natural images score "
                    "< 0.2). Early in training this is expected; late in training check the learning rate, the data "
                    "and the text conditioning.", step, info["noise_score"])
    return path
