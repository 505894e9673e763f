"""``suti train --config train.yaml [--resume [CHECKPOINT]] [key=value ...]``

Wired into ``suti`` by ``add_train_subparser(subparsers)``. Also runnable on its own, which is how
multi-process runs start:

    accelerate launch --num_processes 4 -m suti.training.cli --config train.yaml
    torchrun --nproc_per_node 4 -m suti.training.cli --config train.yaml
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

HELP = "train one cascade stage (text-to-image or in-context) from a YAML/JSON config"
EPILOG = """overrides are dotted keys with YAML values, e.g.
  steps=2000 optim.lr=1e-4 batch_size=16 data.sources=shards/{000000..000099}.tar mixed_precision=bf16
see configs/train_tiny_base.yaml for every field"""


def add_train_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config (.yaml/.yml/.json)")
    p.add_argument("--resume", nargs="?", const="always", default=None, metavar="CHECKPOINT",
                   help="resume from the latest checkpoint in the run folder (fails if there is none), or from "
                        "the given checkpoint folder. Without --resume the config's `resume` applies "
                        "(default auto: resume when a checkpoint exists)")
    p.add_argument("--output-dir", default=None, help="run folder (overrides output_dir)")
    p.add_argument("--steps", type=int, default=None, help="total training steps (overrides steps)")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="checkpoint and stop at this step (the LR schedule still uses `steps`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run_train)
    return p


def run_train(args) -> int:
    from .config import TrainConfig, apply_override, read_config_file
    from .trainer import Trainer

    if not logging.getLogger().handlers:  # `suti train` from the console script: show progress messages
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    d = read_config_file(args.config)
    for item in args.overrides or []:
        apply_override(d, item)
    if args.output_dir:
        d["output_dir"] = args.output_dir
    if args.steps is not None:
        d["steps"] = args.steps
    resume_path = None
    if args.resume == "always":
        d["resume"] = "always"
    elif args.resume:
        resume_path = args.resume
        d["resume"] = "always"
    cfg = TrainConfig.from_dict(d)
    if resume_path is not None:
        _point_run_at(cfg, resume_path)
    trainer = Trainer(cfg)
    result = trainer.train(stop_at_step=args.stop_at_step)
    if trainer.is_main:
        print(json.dumps(result, indent=2))
    return 0


def _point_run_at(cfg, checkpoint: str) -> None:
    """``--resume PATH``: resume from that checkpoint, which must be inside <output_dir>/checkpoints."""
    from pathlib import Path

    from . import state as S

    ckpt = Path(checkpoint).resolve()
    if not (ckpt / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume {checkpoint}: not a complete training checkpoint (no trainer_state.json)")
    try:
        S.verify_checkpoint(ckpt)  # the checkpoint the user chose: damaged is an error, no fallback
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume {checkpoint}: the checkpoint is damaged: {e}") from e
    run = ckpt.parent.parent
    if Path(cfg.output_dir).resolve() != run:
        logging.getLogger("suti.training").info("--resume %s: using run folder %s", checkpoint, run)
        cfg.output_dir = str(run)
    newer = [p for s, p in S.list_checkpoints(run) if p.resolve() != ckpt and s > int(ckpt.name.split("-")[1])]
    if newer:
        raise ValueError(f"--resume {checkpoint}: the run folder has newer checkpoints ({newer[-1].name}); "
                         "move them away first so the run continues from the one you chose")


def main(argv=None) -> int:
    from ..cli import add_threads_option, run_command

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="suti-train")
    sub = parser.add_subparsers(dest="command")
    add_train_subparser(sub)
    add_threads_option(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        argv = ["train"] + argv
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
