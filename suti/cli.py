"""`suti` command line. Each subcommand is a thin wrapper over the library."""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from pathlib import Path

# The names of suti.sampling.SAMPLERS, kept here so `suti --help` needs no torch import (a test checks they agree).
SAMPLER_NAMES = ("ddim", "ddpm", "dpmpp_2m", "unipc")

MIN_EXEMPLAR_SIDE = 8  # px: a smaller image shows no recognisable subject


def _pipe(args):
    from .pipeline import SuTIPipeline

    pipe = SuTIPipeline.from_pretrained(args.model, device=args.device)
    for path in getattr(args, "textual_inversion", None) or []:
        print(f"textual inversion tokens {pipe.load_textual_inversion(path)} from {path}")
    if getattr(args, "dreambooth", None):
        from .personalize.dreambooth import load_dreambooth

        pipe = load_dreambooth(pipe, args.dreambooth)
        print(f"DreamBooth base stage from {args.dreambooth}; its subject is {pipe.instance_prompt!r}")
    return pipe


def _save_grid(images, out, cols=None):
    from retrieval.atomic import atomic_path

    from .images import make_grid

    out = Path(out)
    with atomic_path(out) as tmp:  # a killed run never leaves a half-written grid
        make_grid(images, cols=cols).save(tmp, format="PNG")
    print(f"wrote {out} ({len(images)} images)")


def _sampling_kwargs(args) -> dict:
    return dict(num_images=args.num_images, guidance=args.guidance, steps=args.steps, sampler=args.sampler,
                eta=args.eta, threshold=args.threshold, aug_level=args.aug_level, seed=args.seed,
                stop_at=args.stop_at, progress=True)


def _check_sampling_args(args) -> None:
    """Arguments every sampling command shares, checked before a model is loaded."""
    from .checkpoint import read_cascade_config

    if not args.prompt.strip():
        raise ValueError("--prompt is empty")
    for name in ("num_images", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("guidance", "eta"):
        v = getattr(args, name)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"--{name} must be a finite number >= 0, got {v}")
    if args.aug_level is not None and not 0.0 <= args.aug_level <= 1.0:
        raise ValueError(f"--aug-level must be in [0, 1], got {args.aug_level}")
    if args.stop_at is not None:
        stages = read_cascade_config(args.model).stages
        if args.stop_at not in stages:
            raise ValueError(f"--stop-at {args.stop_at}: {args.model} has no stage {args.stop_at!r}; "
                             f"its stages are {', '.join(stages)}")


def _check_subject_args(args) -> None:
    """``generate``'s exemplar arguments: readable images of a usable size, captions only with images."""
    from PIL import Image

    if args.subject_text and not args.subject:
        raise ValueError("--subject-text describes --subject images, but no --subject images were given"
                         + (" (--retrieve-from brings its own captions)" if args.retrieve_from else ""))
    if args.subject and args.retrieve_from:
        raise ValueError("give either --subject images or --retrieve-from, not both")
    if not args.subject and not args.retrieve_from:
        raise ValueError("generate needs --subject images (1-5) or --retrieve-from; for a prompt alone use "
                         "suti sample")
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    if any(not t.strip() for t in args.subject_text):
        raise ValueError("--subject-text: a caption is empty")
    for path in args.subject:
        try:
            with Image.open(path) as im:
                size = im.size
        except OSError as e:  # missing, unreadable, or not an image (UnidentifiedImageError)
            raise ValueError(f"--subject {path}: cannot read it as an image ({e})") from e
        if min(size) < MIN_EXEMPLAR_SIDE:
            raise ValueError(f"--subject {path}: {size[0]}x{size[1]} px is too small to show a subject "
                             f"(each side must be at least {MIN_EXEMPLAR_SIDE} px)")


def cmd_sample(args):
    _check_sampling_args(args)
    pipe = _pipe(args)
    images = pipe(args.prompt, **_sampling_kwargs(args))
    _save_grid(images, args.out, cols=args.num_images)


def _jsonable_record(record: dict) -> dict:
    return {k: v for k, v in record.items() if v is None or isinstance(v, (str, int, float, bool))}


def _retrieve(pipe, args) -> tuple[list, list[str]]:
    """Re-Imagen mode: fetch the exemplars here, so they are listed and kept in ``<out>.exemplars/``."""
    from retrieval import PairsDatabase
    from retrieval.atomic import atomic_path, atomic_write_json

    db = PairsDatabase.open(args.retrieve_from)
    images, captions, records = pipe.retrieve_exemplars(db, args.prompt, args.k)
    out = Path(args.out)
    folder = out.with_name(out.stem + ".exemplars")
    print(f"retrieved {len(images)} exemplars from {args.retrieve_from} for {args.prompt!r}:")
    kept = []
    for i, (image, caption, record) in enumerate(zip(images, captions, records)):
        path = folder / f"{i:02d}.png"
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        source = record.get("url") or record.get("path")
        if record.get("member"):
            source = f"{source}:{record['member']}"
        score = record.get("score")
        score = f"score {score:.3f}  " if isinstance(score, (int, float)) else ""
        print(f"  {path.name}: {score}{caption!r}  ({source})")
        kept.append({"file": path.name, "caption": caption, "record": _jsonable_record(record)})
    atomic_write_json(folder / "exemplars.json", {"prompt": args.prompt, "database": str(args.retrieve_from),
                                                  "exemplars": kept})
    print(f"wrote the retrieved exemplars to {folder}")
    return images, captions


def cmd_generate(args):
    _check_sampling_args(args)
    _check_subject_args(args)
    pipe = _pipe(args)
    subject, texts = args.subject, args.subject_text or None
    if texts is not None and len(texts) == 1:
        texts = texts[0]
    if args.retrieve_from:
        subject, texts = _retrieve(pipe, args)
    images = pipe(args.prompt, subject_images=subject, subject_texts=texts,
                  guidance_mode=args.guidance_mode, context_guidance=args.context_guidance,
                  text_ratio=args.text_ratio, fit=args.fit, **_sampling_kwargs(args))
    _save_grid(images, args.out, cols=args.num_images)


def cmd_init(args):
    from .pipeline import new_pipeline
    from .presets import preset
    from .text import TextEncoder

    enc = TextEncoder.from_pretrained(args.text_encoder, max_length=args.max_length)
    cfgs = []
    for spec in args.stage:
        name, _, pname = spec.partition("=")
        if not pname:
            pname = name
        cfgs.append(preset(pname, text_embed_dim=enc.dim, context=args.context and not cfgs, stage_name=name))
    pipe = new_pipeline(enc, cfgs)
    pipe.save_pretrained(args.out)
    print(json.dumps({"out": str(args.out), "stages": {s.name: s.unet.num_parameters() for s in pipe.cascade.stages}}))


def cmd_set_stage(args):
    from .checkpoint import load_stage
    from .pipeline import save_stage_into

    stage = load_stage(args.stage_folder)
    save_stage_into(args.model, stage)
    print(f"stage {stage.name!r} of {args.model} replaced from {args.stage_folder}")


def cmd_convert(args):
    from .pipeline import SuTIPipeline

    pipe, report = SuTIPipeline.from_text_to_image(args.model, device=args.device)
    pipe.save_pretrained(args.out)
    print(json.dumps(report, indent=2))


def cmd_dreambooth(args):
    from .personalize import DreamBoothConfig, dreambooth

    pipe = _pipe(args)
    cfg = DreamBoothConfig(steps=args.steps, lr=args.lr, rare_token=args.rare_token,
                           prior_preservation=not args.no_prior, num_prior_images=args.num_prior_images)
    result = dreambooth(pipe, args.subject, args.class_noun, cfg)
    result.save_pretrained(args.out)
    print(f"saved DreamBooth stage to {args.out}; prompt with {result.instance_prompt!r}")


def cmd_textual_inversion(args):
    from .personalize import TextualInversionConfig, textual_inversion

    pipe = _pipe(args)
    cfg = TextualInversionConfig(steps=args.steps, lr=args.lr, token=args.token)
    result = textual_inversion(pipe, args.subject, args.init_word, cfg)
    path = result.save(args.out)
    print(f"saved token {result.token!r} to {path}")


def _common(p, model=True):
    if model:
        p.add_argument("--model", required=True, help="SuTI checkpoint folder (cascade.json + stages)")
    p.add_argument("--device", default="cpu")


def _sampling(p):
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="output PNG grid")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim",
                   help="ddim, ddpm, or the multistep dpmpp_2m / unipc (closer to many-step results at 20 steps)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0: deterministic; ddpm uses 1)")
    p.add_argument("--threshold", choices=["dynamic", "static", "none"], default="dynamic",
                   help="x0 clipping: Imagen's dynamic thresholding (p=0.995), static [-1, 1], or none")
    p.add_argument("--aug-level", type=float, default=None,
                   help="noise-conditioning level of the SR stages (default: each stage config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-at", default=None, help="last stage to run (name)")
    p.add_argument("--textual-inversion", nargs="+", default=[], metavar="FILE",
                   help="learned token embeddings (suti textual-inversion --out) to load first")
    p.add_argument("--dreambooth", default=None, metavar="FOLDER",
                   help="a DreamBooth result folder (suti dreambooth --out): its fine-tuned base stage is used")


_EXTENSIONS = [  # (module, function) adding subcommands owned by other packages
    ("suti.training.cli", "add_train_subparser"),
    ("suti.text_cache", "add_precompute_subparser"),
    ("retrieval.cli", "add_subparsers"),
    ("dataset_builder.cli", "add_subparser"),
    ("suti.evaluate", "add_subparser"),
    ("suti.serve.cli", "add_subparser"),  # web libraries are imported only when `suti serve` runs
    ("suti.demo.cli", "add_subparser"),  # the subject world is imported only when `suti demo` runs
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="suti", description="Subject-driven text-to-image (SuTI) engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="text-to-image: a prompt in, a PNG grid out")
    _common(p)
    _sampling(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("generate", help="subject-driven generation from 1-5 exemplar images")
    _common(p)
    _sampling(p)
    p.add_argument("--subject", nargs="+", default=[], help="exemplar image files (1-5)")
    p.add_argument("--subject-text", nargs="+", default=[], help="one caption for all, or one per image")
    p.add_argument("--guidance-mode", choices=["text", "context", "joint", "interleaved", "none"], default=None,
                   help="guidance with subject images (default: interleaved)")
    p.add_argument("--text-ratio", type=float, default=0.5, help="interleaved guidance: share of text-guided steps")
    p.add_argument("--context-guidance", type=float, default=None,
                   help="scale of the context-guided steps (default: --guidance)")
    p.add_argument("--fit", choices=["center-crop", "pad"], default="center-crop")
    p.add_argument("--retrieve-from", default=None, help="a retrieval PairsDatabase folder (Re-Imagen mode)")
    p.add_argument("--k", type=int, default=3)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("init", help="create a freshly initialised cascade folder from presets")
    p.add_argument("--text-encoder", required=True, help="HF name or folder")
    p.add_argument("--stage", nargs="+", required=True, help="NAME=PRESET, base first, e.g. base=tiny-base32 sr=tiny-sr64")
    p.add_argument("--context", action="store_true", help="give the base stage SuTI context attention")
    p.add_argument("--max-length", type=int, default=128, help="text tokens (the default of suti text-cache and TextEncoder)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("set-stage", help="replace one stage of a cascade folder with a trained stage folder")
    p.add_argument("--model", required=True)
    p.add_argument("stage_folder")
    p.set_defaults(func=cmd_set_stage)

    p = sub.add_parser("convert", help="text-to-image checkpoint -> SuTI (zero-init context attention)")
    _common(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("dreambooth", help="DreamBooth baseline: fine-tune the base stage on a subject")
    _common(p)
    p.add_argument("--subject", nargs="+", required=True)
    p.add_argument("--class-noun", required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--rare-token", default="sks")
    p.add_argument("--no-prior", action="store_true")
    p.add_argument("--num-prior-images", type=int, default=16)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_dreambooth)

    p = sub.add_parser("textual-inversion", help="Textual Inversion baseline: learn a token embedding")
    _common(p)
    p.add_argument("--subject", nargs="+", required=True)
    p.add_argument("--init-word", required=True)
    p.add_argument("--token", default="<subject>")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--out", required=True, help="output .safetensors")
    p.set_defaults(func=cmd_textual_inversion)

    for module, fn in _EXTENSIONS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that package part is not installed in this build
            raise
        getattr(mod, fn)(sub)
    add_threads_option(sub)
    return parser


def thread_count(requested: int | None = None) -> tuple[int, str]:
    """How many CPU threads torch gets, and why: ``--threads``, else ``SUTI_THREADS``, else
    ``OMP_NUM_THREADS``, else min(4, the CPUs this process may use). Many threads on a busy machine wait
    for each other: on a loaded 2-core machine one thread ran a sampling call tens of times faster."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return requested, "--threads"
    for var in ("SUTI_THREADS", "OMP_NUM_THREADS"):
        raw = os.environ.get(var, "").strip()
        if raw:
            if not raw.isdigit() or int(raw) < 1:
                raise ValueError(f"environment variable {var}={raw!r} must be a whole number >= 1")
            return int(raw), var
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cores), f"min(4, {cores} CPUs)"


def add_threads_option(subparsers) -> None:
    """Give every leaf subcommand ``--threads`` (nested ones like ``index build`` included)."""
    for p in subparsers.choices.values():
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        for action in nested:
            add_threads_option(action)
        if not nested and "--threads" not in p._option_string_actions:
            p.add_argument("--threads", type=int, default=None,
                           help="CPU threads for torch (default: $SUTI_THREADS, else $OMP_NUM_THREADS, "
                                "else min(4, CPUs))")


def is_expected_error(e: BaseException) -> bool:
    """Errors a user can cause and fix (bad files, arguments, data, a diverged run, too little memory):
    reported as one line. Anything else is a bug and keeps its traceback."""
    expected: tuple = (OSError, ValueError, MemoryError)
    for module, names in (("torch", ("OutOfMemoryError",)), ("retrieval.errors", ("RetrievalError",)),
                          ("suti.training.trainer", ("TrainingDiverged",))):
        mod = sys.modules.get(module)  # not imported: the error cannot be one of its classes
        expected += tuple(getattr(mod, n) for n in names if mod is not None and hasattr(mod, n))
    return isinstance(e, expected)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


def run_command(args) -> int:
    """Run a parsed subcommand: expected errors become one line on stderr and exit status 2. Torch's thread
    count is set for the command (see ``thread_count``) and restored after it, for callers in a process."""
    import torch

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(thread_count(getattr(args, "threads", None))[0])
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"suti {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - filtered just below
        if not is_expected_error(e):
            raise
        print(f"suti {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(previous)
    return int(result or 0)


def main(argv=None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
