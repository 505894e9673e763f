"""Train one cascade stage (base or super-resolution; text-to-image or in-context) with accelerate.

One ``Trainer`` trains one stage and writes one run folder:

    <output_dir>/metrics.jsonl        one JSON object per log step (and per sample grid / checkpoint event)
    <output_dir>/samples/step-*.png   sample grids (+ .json with prompts)
    <output_dir>/checkpoints/step-*/  resumable checkpoints (see suti.training.state)
    <output_dir>/stage/               the exported stage folder (EMA weights by default)

Exactness. The diffusion noise, timesteps and condition drops of step s, micro-step m on rank r come
from a generator seeded with (seed, s, m, r); global RNG states (dropout) are saved per rank; the data
stream restarts at its saved position; LR is a function of the step. So a run stopped at any
checkpoint and resumed ends bitwise equal to the uninterrupted run (on CUDA with ``deterministic: true``).

NaN/inf guard. When the loss or the gradient norm is not finite on any rank, the step is skipped on
all ranks: gradients are dropped, neither the optimizer nor the EMA moves (with fp16 the loss scale
backs off), and ``nan_skips`` is incremented, logged and saved. A run that keeps skipping (more than
``max_skipped_share`` of the last ``skip_window`` steps), or whose weights stop being finite after an
optimizer step, stops with ``TrainingDiverged``: it never finishes "successfully" with a broken model.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from retrieval.atomic import atomic_write_text

from ..cascade import Stage, convert_to_context_stage
from ..checkpoint import load_stage, load_tensors, load_weights_strict, save_stage
from ..config import StageConfig
from ..context import Exemplars
from ..presets import preset, with_context
from . import state as S
from .config import TrainConfig
from .data import BatchStream, DataError, DataPosition, SkipStats, make_loader
from .ema import EMA
from .samples import render_samples, save_grid
from .text import TextConditioner

log = logging.getLogger("suti.training")

# Config fields whose change breaks exact resume (warned about, not refused).
_ORDER_KEYS = ("batch_size", "grad_accum", "seed", "data.sources", "data.shuffle", "data.shuffle_buffer",
               "data.task", "optim.lr", "optim.warmup_steps", "optim.schedule", "steps", "stage", "init_from")


class TrainingDiverged(RuntimeError):
    """The run diverged (non-finite weights, or too many skipped steps). The last checkpoint is untouched."""


TASK_LABELS = {"text_to_image": "text-to-image", "in_context": "in-context"}


# ----------------------------------------------------------------------------- small pure helpers
def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def step_generator(seed: int, step: int, micro: int, rank: int, device) -> torch.Generator:
    """The generator for the diffusion noise/timesteps/drops of one micro-step on one rank."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, step, micro, rank))


def lr_at(step: int, optim, total_steps: int) -> float:
    """Linear warm-up (step 0 gets lr/warmup), then constant or cosine down to ``min_lr_ratio * lr``."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
    return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_optimizer(stage: Stage, optim) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; ``optim.name: adamw8bit`` uses bitsandbytes' 8-bit AdamW (a quarter
    of AdamW's optimizer memory, for large stages such as a whole IF U-Net on one GPU)."""
    params = [p for p in stage.parameters() if p.requires_grad]
    kw = dict(lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay)
    if optim.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ValueError("training config: optim.name=adamw8bit needs bitsandbytes (pip install bitsandbytes, "
                             "on a CUDA machine); use optim.name=adamw otherwise") from e
        return bnb.optim.AdamW8bit(params, **kw)
    impl = getattr(optim, "implementation", "auto")
    if impl == "foreach":
        kw["foreach"] = True
    elif impl == "fused":
        kw["fused"] = True
    elif impl == "for-loop":
        kw["foreach"] = False
    return torch.optim.AdamW(params, **kw)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _get(d: dict, dotted: str):
    for p in dotted.split("."):
        d = d.get(p) if isinstance(d, dict) else None
    return d


class StageLoss(nn.Module):
    """The stage's training loss as ``forward``, so DDP sees (and synchronises) it."""

    def __init__(self, stage: Stage, channels_last: bool = False):
        super().__init__()
        self.stage = stage
        self.channels_last = channels_last

    def forward(self, images, text_emb, text_mask, ex_images=None, ex_text_emb=None, ex_text_mask=None,
                ex_mask=None, generator=None):
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        ex = None
        if ex_images is not None:
            ex = Exemplars(ex_images, ex_text_emb, ex_text_mask, ex_mask)
        return self.stage.training_loss(images, text_emb, text_mask, exemplars=ex, generator=generator)


def _set_deterministic(on: bool) -> None:
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode needs it
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def _make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    # Let several trainers (e.g. with different mixed precision) live in one process, as in tests.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu,
                       kwargs_handlers=[DistributedDataParallelKwargs(
                           find_unused_parameters=cfg.find_unused_parameters)])


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Set up everything in ``__init__`` (resuming if a checkpoint is found); ``train()`` runs the loop.

    ``text`` may be a TextConditioner or a TextEncoder (otherwise built from ``config.text``).
    ``loss_hooks``: callables ``(step, loss) -> loss`` applied to each micro-batch loss (tests inject NaNs).
    """

    def __init__(self, config: TrainConfig, *, text=None):
        self.config = cfg = config
        self.run_dir = Path(cfg.output_dir)
        _set_deterministic(cfg.deterministic)
        self.accelerator = acc = _make_accelerator(cfg)
        self.device = acc.device
        self.rank, self.world = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process
        self.loss_hooks: list = []
        self.losses: list[float] = []  # per step, this rank's loss (nan for skipped steps)
        self.step = 0
        self.nan_skips = 0
        self.position = DataPosition()
        self.skips = SkipStats()
        self._held = None
        self._stop_requested = False
        self._last_saved_step = -1
        self._recent_skips: collections.deque = collections.deque(maxlen=cfg.skip_window)

        resume_from = self._resolve_resume()
        if text is None:
            text = TextConditioner.from_spec(cfg.text, self.device)
        elif not isinstance(text, TextConditioner):
            text = TextConditioner(encoder=text)
        self.text = text

        from accelerate.utils import set_seed

        set_seed(cfg.seed)  # identical initialisation on every rank
        self.stage = self._build_stage(resume_from)
        if self.stage.config.unet.text_embed_dim != self.text.dim:
            raise ValueError(f"stage {self.stage.name!r} expects {self.stage.config.unet.text_embed_dim}-d text "
                             f"embeddings but the text conditioning gives {self.text.dim}-d")
        if cfg.data.task == "in_context" and not self.stage.uses_context:
            raise ValueError("data.task=in_context needs a stage with context attention")
        if cfg.data.task == "text_to_image" and self.stage.uses_context:
            log.warning("training a context stage on text-to-image data: its context layers get no gradient "
                        "(set find_unused_parameters: true for multi-process runs)")
        if cfg.channels_last:
            self.stage.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.stage, cfg.optim)
        self.ema = EMA(self.stage, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
        if cfg.compile:
            self.stage.unet.compile()  # in place: parameter names, checkpoints and EMA stay as they are
        self.compile_seconds = None
        self.model, self.optimizer = acc.prepare(StageLoss(self.stage, cfg.channels_last), self.optimizer)
        if self.ema is not None:
            self.ema.to(self.device)
        set_seed(cfg.seed + self.rank, device_specific=False)  # dropout differs across ranks
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        self._init_metrics_log()
        self.stream = BatchStream(cfg.data.sources, cfg.data.task, self.stage.image_size, cfg.batch_size,
                                  seed=cfg.seed, shuffle=cfg.data.shuffle, shuffle_buffer=cfg.data.shuffle_buffer,
                                  rank=self.rank, world=self.world, start=self.position, fit=cfg.data.fit,
                                  max_exemplars=cfg.data.max_exemplars)
        if self.step == 0:
            for key, reason in self.stream.index_skips:
                self.skips.add(key, reason)

    # -- setup ---------------------------------------------------------------------------------
    def _resolve_resume(self) -> Path | None:
        """The newest checkpoint that reads back whole. A damaged newer one (torn weights, an edited
        trainer_state.json) is skipped with a warning naming the file; if none is usable, an error."""
        cfg = self.config
        ckpts = S.list_checkpoints(self.run_dir)
        if cfg.resume == "never":
            if ckpts:
                raise FileExistsError(f"{self.run_dir} already has checkpoints (latest {ckpts[-1][1]}); resume=never "
                                      "refuses to overwrite them: choose another output_dir or resume")
            return None
        if cfg.resume == "always" and not ckpts:
            raise FileNotFoundError(f"resume requested but {S.checkpoints_dir(self.run_dir)} has no complete "
                                    "checkpoint")
        damaged = []
        for _, path in reversed(ckpts):
            try:
                S.verify_checkpoint(path)
            except (OSError, ValueError) as e:
                damaged.append(f"{path.name}: {e}")
                if self.is_main:
                    log.warning("checkpoint %s is damaged and is skipped (%s); trying the previous one", path, e)
                continue
            if self.is_main:
                log.info("resuming from %s", path)
            return path
        if damaged:
            raise ValueError(f"no usable checkpoint in {S.checkpoints_dir(self.run_dir)}; refusing to start over "
                             f"on top of them: {'; '.join(damaged)}")
        return None

    def _build_stage(self, resume_from: Path | None) -> Stage:
        cfg = self.config
        if resume_from is not None:
            return load_stage(resume_from / "model").train()
        if cfg.init_from:
            stage = load_stage(cfg.init_from).train()
            if cfg.data.task == "in_context" and not stage.uses_context:
                stage, report = convert_to_context_stage(stage, self._context_flags(stage.config.unet.num_levels))
                log.info("converted %s to an in-context stage: +%d parameters (%.1f%%)", cfg.init_from,
                         report["params_added"], 100 * report["growth"])
            return stage.train()
        spec = cfg.stage
        if spec.config is not None:
            d = dict(spec.config)
        elif spec.preset:
            d = preset(spec.preset, text_embed_dim=self.text.dim, context=cfg.data.task == "in_context",
                       prediction=spec.prediction).to_dict()
        else:
            raise ValueError("training config: set stage.preset, stage.config or init_from")
        d = _deep_merge(d, spec.overrides)
        if spec.name:
            d["name"] = spec.name
        elif spec.config is None:
            d["name"] = "base" if d.get("lowres_size") is None else f"sr{d['unet']['image_size']}"
        stage_cfg = StageConfig.from_dict(d)
        if cfg.data.task == "in_context" and spec.context_levels is not None:
            stage_cfg = with_context(stage_cfg, self._context_flags(stage_cfg.unet.num_levels))
        return Stage(stage_cfg).train()

    def _context_flags(self, num_levels: int) -> tuple | None:
        """stage.context_levels as one flag per U-Net level (None: the conversion's default, the lowest level)."""
        levels = self.config.stage.context_levels
        if levels is None:
            return None
        bad = [i for i in levels if not isinstance(i, int) or not 0 <= i < num_levels]
        if bad or not levels:
            raise ValueError(f"stage.context_levels: levels are 0..{num_levels - 1} for this U-Net, got {levels}")
        return tuple(i in levels for i in range(num_levels))

    def _load_checkpoint(self, ckpt: Path) -> None:
        st = S.read_trainer_state(ckpt)
        self._warn_config_changes(st.get("config", {}))
        S.load_optimizer(ckpt, self.optimizer)
        if self.ema is not None:
            if (ckpt / "ema").is_dir() and st.get("ema"):
                weights = ckpt / "ema" / "model.safetensors"
                load_weights_strict(self.ema.module.unet, load_tensors(weights, device=self.device), weights)
                self.ema.num_updates = int(st["ema"]["num_updates"])
            else:
                log.warning("%s has no EMA weights; the EMA restarts from the current weights", ckpt)
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        self.step = int(st["step"])
        self.nan_skips = int(st.get("nan_skips", 0))
        self._last_saved_step = self.step
        if int(st.get("world_size", 1)) == self.world:
            rank_state = S.load_rank_state(ckpt, self.rank, restore=True)
            self.position = DataPosition.from_dict(rank_state["data"])
            self.skips = SkipStats.from_dict(rank_state.get("skips", {}))
        else:
            # Another process count deals records differently: restart the data at the next epoch.
            epochs = [S.load_rank_state(ckpt, r, restore=False)["data"]["epoch"] for r in range(st["world_size"])]
            self.position = DataPosition(max(epochs) + 1, 0)
            log.warning("checkpoint %s was written by %d processes, this run has %d: data restarts at epoch %d "
                        "and the run is not an exact continuation", ckpt, st["world_size"], self.world,
                        self.position.epoch)

    def _warn_config_changes(self, saved: dict) -> None:
        now = self.config.to_dict()
        changed = [k for k in _ORDER_KEYS if _get(saved, k) != _get(now, k)]
        if changed and self.is_main:
            log.warning("training config changed since the checkpoint (%s): the resumed run is not an exact "
                        "continuation", ", ".join(changed))

    def _init_metrics_log(self) -> None:
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.metrics_path.exists():
            # Drop lines after the resume point (a run that crashed after its last checkpoint).
            keep = []
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        keep.append(line)
                except json.JSONDecodeError:
                    continue  # a torn last line
            if self.step:
                atomic_write_text(self.metrics_path, "".join(x + "\n" for x in keep))
            else:
                self.metrics_path.unlink()  # a fresh run

    # -- batches -------------------------------------------------------------------------------
    def _next_batch(self, it, max_empty: int = 1000) -> dict:
        """The next usable micro-batch as model inputs on the device (skips are counted)."""
        for _ in range(max_empty):
            batch = next(it)
            for key, reason in batch["skipped"]:
                self.skips.add(key, reason)
            keep = [i for i, c in enumerate(batch["captions"]) if self.text.available(c)]
            if "exemplar_captions" in batch:
                keep = [i for i in keep if all(self.text.available(c) for c, on in
                                               zip(batch["exemplar_captions"][i], batch["exemplar_mask"][i]) if on)]
            for i in sorted(set(range(len(batch["keys"]))) - set(keep)):
                self.skips.add(batch["keys"][i], "caption not in the text cache (and no text encoder)")
            self.position = DataPosition(batch["position"]["epoch"], batch["position"]["index"],
                                         self.position.samples + len(keep))
            if keep:
                return self._inputs(batch, keep)
        raise DataError(f"rank {self.rank}: {max_empty} batches in a row had no usable sample; recent skips: "
                        f"{self.skips.recent[-3:]}")

    def _inputs(self, batch: dict, rows: list[int]) -> dict:
        dev = self.device
        emb, mask = self.text([batch["captions"][i] for i in rows], dev)
        out = {"images": batch["images"][rows].to(dev), "text_emb": emb, "text_mask": mask}
        if "exemplar_images" in batch:
            ex_mask = batch["exemplar_mask"][rows].to(dev)
            ex_emb, ex_tmask = self.text.exemplars([batch["exemplar_captions"][i] for i in rows], ex_mask, dev)
            out.update(ex_images=batch["exemplar_images"][rows].to(dev), ex_text_emb=ex_emb, ex_text_mask=ex_tmask,
                       ex_mask=ex_mask)
        return {"inputs": out, "n": len(rows)}

    # -- one optimisation step -----------------------------------------------------------------
    def _train_step(self, micro_batches: list[dict]) -> dict:
        acc, cfg = self.accelerator, self.config
        self.model.train()
        total = sum(mb["n"] for mb in micro_batches)
        loss = torch.zeros((), device=self.device)
        for m, mb in enumerate(micro_batches):
            g = step_generator(cfg.seed, self.step, m, self.rank, self.device)
            sync = contextlib.nullcontext() if m == len(micro_batches) - 1 else acc.no_sync(self.model)
            with sync:
                micro_loss = self.model(**mb["inputs"], generator=g)
                for hook in self.loss_hooks:
                    micro_loss = hook(self.step, micro_loss)
                acc.backward(micro_loss * (mb["n"] / total))
            loss = loss + micro_loss.detach().float() * (mb["n"] / total)
        params = [p for p in self.stage.parameters() if p.requires_grad]
        grad_norm = acc.clip_grad_norm_(params, cfg.clip_grad_norm or float("inf"))
        grad_norm = torch.as_tensor(grad_norm, device=self.device).float()
        flags = torch.stack([(~torch.isfinite(loss) | ~torch.isfinite(grad_norm)).float(),
                             torch.tensor(float(self._stop_requested), device=self.device)])
        if self.world > 1:
            flags = acc.reduce(flags, reduction="sum")
        skip, self._stop_requested = bool(flags[0] > 0), bool(flags[1] > 0)
        lr = lr_at(self.step, cfg.optim, cfg.steps)
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            self.nan_skips += 1
            scaler = getattr(acc, "scaler", None)
            if scaler is not None:  # what GradScaler.update does after an overflow
                scaler.update(new_scale=scaler.get_scale() * scaler.get_backoff_factor())
            log.warning("step %d: non-finite loss (%s) or grad norm (%s) on some rank; step skipped "
                        "(%d skipped so far)", self.step, loss.item(), grad_norm.item(), self.nan_skips)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self._check_weights_finite(params, lr)
            if self.ema is not None:
                self.ema.update(self.stage)
        self._check_skip_share(skip)
        return {"loss": loss.item() if not skip else float("nan"), "grad_norm": grad_norm.item(), "lr": lr,
                "skipped": skip, "n": total}

    def _check_weights_finite(self, params: list, lr: float) -> None:
        """A finite loss and gradient can still step the weights to inf/NaN (e.g. a huge learning rate)."""
        largest = torch.stack(torch._foreach_norm([p.detach() for p in params], float("inf")))
        if not bool(torch.isfinite(largest).all()):
            raise TrainingDiverged(
                f"step {self.step}: the weights are no longer finite after the optimizer step (lr={lr:g}); the run "
                f"has diverged. Nothing was saved from it; the last checkpoint is {self._last_checkpoint()}. "
                "Lower optim.lr or set clip_grad_norm.")

    def _last_checkpoint(self) -> str:
        latest = S.latest_checkpoint(self.run_dir)
        return str(latest) if latest is not None else "none (no checkpoint was written yet)"

    def _check_skip_share(self, skipped: bool) -> None:
        cfg = self.config
        self._recent_skips.append(skipped)
        n = sum(self._recent_skips)
        if n > cfg.max_skipped_share * cfg.skip_window:
            raise TrainingDiverged(
                f"step {self.step}: {n} of the last {len(self._recent_skips)} steps were skipped for a non-finite "
                f"loss or gradient (more than max_skipped_share={cfg.max_skipped_share:g} of skip_window="
                f"{cfg.skip_window}); the run has diverged and was stopped without saving. The last checkpoint is "
                f"{self._last_checkpoint()}. Lower optim.lr (now {cfg.optim.lr:g}), check the data, or "
                "raise max_skipped_share.")

    # -- the loop ------------------------------------------------------------------------------
    def train(self, stop_at_step: int | None = None) -> dict:
        """Train until ``config.steps`` (or ``stop_at_step``, or SIGTERM/SIGINT: then checkpoint and return).
        At ``config.steps`` the final checkpoint is written, the stage exported and a last grid drawn."""
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        stop = min(cfg.steps, stop_at_step if stop_at_step is not None else cfg.steps)
        self.stream.start = self.position  # continue where the last train() call (or the checkpoint) stopped
        it = iter(make_loader(self.stream, cfg.data.num_workers))
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (self.is_main and cfg.progress),
                   desc=f"train {self.stage.name} ({TASK_LABELS[cfg.data.task]})", dynamic_ncols=True)
        window = {"loss": 0.0, "n": 0, "t": time.time(), "steps": 0}
        smooth = None
        old_handlers = self._install_signal_handlers()
        try:
            while self.step < stop and not self._stop_requested:
                micro = [self._next_batch(it) for _ in range(cfg.grad_accum)]
                t_step = time.perf_counter()
                out = self._train_step(micro)
                if cfg.compile and self.compile_seconds is None:  # the first step compiles forward + backward
                    self.compile_seconds = time.perf_counter() - t_step
                    log.info("torch.compile: first step took %.1f s (compiling)", self.compile_seconds)
                self.losses.append(out["loss"])
                self.step += 1
                if not out["skipped"]:
                    window["loss"] += out["loss"]
                    window["n"] += 1
                    smooth = out["loss"] if smooth is None else 0.9 * smooth + 0.1 * out["loss"]
                window["steps"] += 1
                bar.update(1)
                if smooth is not None:
                    bar.set_postfix(loss=f"{smooth:.4f}", skipped_steps=self.nan_skips,
                                    skipped_samples=self.skips.total, refresh=False)
                if self.step % cfg.log_every == 0 or self.step == stop:
                    self._log_metrics(out, window)
                    window = {"loss": 0.0, "n": 0, "t": time.time(), "steps": 0}
                if cfg.sample.every and self.step % cfg.sample.every == 0 and self.step < cfg.steps:
                    self.write_samples()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
            self._restore_signal_handlers(old_handlers)
            del it  # stop DataLoader workers
        if self._last_saved_step != self.step:
            self.save_checkpoint()
        result = {"step": self.step, "nan_skips": self.nan_skips, "skipped_samples": self.skips.total,
                  "checkpoint": str(S.latest_checkpoint(self.run_dir)), "finished": self.step >= cfg.steps,
                  "compile_seconds": self.compile_seconds}
        if self.step >= cfg.steps:
            result["export_dir"] = str(self.export())
            result["samples"] = str(self.write_samples()) if self._can_sample() else None
        acc.wait_for_everyone()
        return result

    def _install_signal_handlers(self):
        """SIGTERM/SIGINT: finish the current step, checkpoint, return. A second signal acts as usual."""
        old = {}

        def handler(signum, frame):
            log.warning("signal %d: stopping after this step and writing a checkpoint (signal again to abort)", signum)
            self._stop_requested = True
            self._restore_signal_handlers(old)

        with contextlib.suppress(ValueError):  # not in the main thread: no handlers
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signal_handlers(old):
        for sig, h in old.items():
            signal.signal(sig, h)

    def _log_metrics(self, out: dict, window: dict) -> None:
        acc = self.accelerator
        vals = torch.tensor([window["loss"], window["n"], self.skips.total, self.position.samples],
                            device=self.device, dtype=torch.float64)
        if self.world > 1:
            vals = acc.reduce(vals, reduction="sum")
        if not self.is_main:
            return
        dt = max(time.time() - window["t"], 1e-9)
        rec = {"step": self.step, "loss": (vals[0] / vals[1]).item() if vals[1] > 0 else None,
               "grad_norm": out["grad_norm"], "lr": out["lr"], "nan_skips": self.nan_skips,
               "skipped_samples": int(vals[2]), "samples": int(vals[3]), "epoch": self.position.epoch,
               "steps_per_s": window["steps"] / dt, "time": time.time()}
        self._append_metrics(rec)

    def _append_metrics(self, rec: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    # -- samples -------------------------------------------------------------------------------
    def _can_sample(self) -> bool:
        spec = self.config.sample
        return bool(spec.prompts) or self.stage.uses_context or self.stage.config.unet.lowres_cond or \
            spec.num_held > 0

    def held_batch(self) -> dict:
        """A fixed batch (the first records of the data, unshuffled) for SR / in-context sample grids."""
        if self._held is None:
            cfg = self.config
            stream = BatchStream(cfg.data.sources, cfg.data.task, self.stage.image_size,
                                 max(1, cfg.sample.num_held), seed=cfg.seed, shuffle=False, fit=cfg.data.fit,
                                 max_exemplars=cfg.data.max_exemplars)
            for n, batch in enumerate(stream):
                if n == 1000:
                    raise DataError("no usable sample for the sample grid in the first 1000 batches of the data")
                if batch["keys"]:
                    keep = [i for i, c in enumerate(batch["captions"]) if self.text.available(c)]
                    self._held = {k: (v[keep] if isinstance(v, torch.Tensor) else [v[i] for i in keep])
                                  for k, v in batch.items() if k not in ("position", "skipped")}
                    break
        return self._held

    def write_samples(self) -> Path | None:
        """Draw a sample grid with the EMA (or raw) weights into <run>/samples (main process only)."""
        if not self.is_main:
            return None
        stage = self.ema.module if self.ema is not None else self.stage
        needs_held = stage.uses_context or stage.config.unet.lowres_cond or not self.config.sample.prompts
        held = self.held_batch() if needs_held else None
        grid, info = render_samples(stage, self.text, self.config.sample, held, self.device)
        path = save_grid(grid, info, self.run_dir / "samples", self.step)
        self._append_metrics({"step": self.step, "event": "samples", "path": str(path),
                              "noise_score": info["noise_score"]})
        return path

    # -- checkpoints and export ----------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        acc, cfg = self.accelerator, self.config
        acc.wait_for_everyone()
        if self.is_main:
            S.prepare_partial(self.run_dir, self.step)
        acc.wait_for_everyone()
        tmp = S.partial_dir(self.run_dir, self.step)
        S.save_rank_state(tmp, self.rank, {"data": self.position.to_dict(), "skips": self.skips.to_dict()})
        if self.is_main:
            save_stage(self.stage, tmp / "model")
            if self.ema is not None:
                save_stage(self.ema.module, tmp / "ema")
            S.save_optimizer(tmp, self.optimizer)
        acc.wait_for_everyone()
        final = S.checkpoints_dir(self.run_dir) / S.step_dir_name(self.step)
        if self.is_main:
            missing = [r for r in range(self.world) if not (tmp / f"rank-{r:05d}.json").is_file()]
            if missing:
                raise RuntimeError(f"checkpoint {tmp}: ranks {missing} did not write their state (the run folder "
                                   "must be on a file system every process can see)")
            scaler = getattr(acc, "scaler", None)
            S.write_json(tmp / "trainer_state.json", {
                "format": S.CHECKPOINT_FORMAT, "version": S.CHECKPOINT_VERSION, "step": self.step,
                "scheduler": {"step": self.step, "lr": lr_at(max(self.step - 1, 0), cfg.optim, cfg.steps)},
                "nan_skips": self.nan_skips, "world_size": self.world,
                "ema": self.ema.meta() if self.ema is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "text": self.text.describe(), "config": cfg.to_dict(), "time": time.time()})
            S.commit_partial(self.run_dir, self.step, cfg.keep_checkpoints)
            self._append_metrics({"step": self.step, "event": "checkpoint", "path": str(final)})
        acc.wait_for_everyone()
        self._last_saved_step = self.step
        return final

    def export(self, folder=None) -> Path:
        """Write the stage folder (EMA weights unless ``ema.export: raw``) with suti.checkpoint.save_stage."""
        cfg = self.config
        folder = Path(folder or cfg.export_dir or self.run_dir / "stage")
        if self.is_main:
            use_ema = self.ema is not None and cfg.ema.export == "ema"
            save_stage(self.ema.module if use_ema else self.stage, folder)
            S.write_json(folder / "training.json", {"step": self.step, "weights": "ema" if use_ema else "raw",
                                                    "nan_skips": self.nan_skips, "text": self.text.describe(),
                                                    "task": cfg.data.task})
            log.info("exported stage %r (%s weights) to %s", self.stage.name, "EMA" if use_ema else "raw", folder)
        self.accelerator.wait_for_everyone()
        return folder
