"""`suti` command line. Each subcommand is a thin wrapper over the library."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path


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
    from .images import make_grid

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    make_grid(images, cols=cols).save(tmp, format="PNG")
    tmp.replace(out)  # a killed run never leaves a half-written grid
    print(f"wrote {out} ({len(images)} images)")


def _sampling_kwargs(args) -> dict:
    return dict(num_images=args.num_images, guidance=args.guidance, steps=args.steps, sampler=args.sampler,
                eta=args.eta, threshold=args.threshold, aug_level=args.aug_level, seed=args.seed,
                stop_at=args.stop_at, progress=True)


def cmd_sample(args):
    pipe = _pipe(args)
    images = pipe(args.prompt, **_sampling_kwargs(args))
    _save_grid(images, args.out, cols=args.num_images)


def cmd_generate(args):
    pipe = _pipe(args)
    texts = args.subject_text if args.subject_text else None
    if texts is not None and len(texts) == 1:
        texts = texts[0]
    retrieve = None
    if args.retrieve_from:
        from retrieval import PairsDatabase

        retrieve = PairsDatabase.open(args.retrieve_from)
    images = pipe(args.prompt, subject_images=args.subject or None, subject_texts=texts,
                  guidance_mode=args.guidance_mode, context_guidance=args.context_guidance,
                  text_ratio=args.text_ratio, fit=args.fit,
                  retrieve_from=retrieve, k=args.k, **_sampling_kwargs(args))
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
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
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
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (OSError, ValueError) as e:  # missing/unreadable files and bad arguments: one line, no traceback
        print(f"suti {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
