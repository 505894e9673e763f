"""``suti demo``: the subcommand. The demo's modules are imported only when it runs."""
from __future__ import annotations


def add_subparser(sub) -> None:
    p = sub.add_parser("demo", help="the shipped world model draws held-out subjects from 3 photos: grid, HTML, metrics",
                       description="The shipped world model draws held-out subjects (never seen in training) from "
                                   "their photos, next to text-to-image samples of the same prompts, judged by the "
                                   "world's judges. Writes grid.png, index.html and metrics.json.")
    p.add_argument("--model", default=None, help="pipeline folder (default: the shipped world model)")
    p.add_argument("--out", default=None, help="output folder (default runs/demo, or runs/from_scratch)")
    p.add_argument("--subjects", type=int, default=None, help="how many held-out subjects, 1-30 (default 3; "
                                                               "10 with --from-scratch)")
    p.add_argument("--prompts", type=int, default=None, help="prompts per subject, 1-25, spread over the skills "
                                                              "(default 4; 5 with --from-scratch)")
    p.add_argument("--samples", type=int, default=None, help="samples per prompt, each from its own noise "
                                                              "(default 1; 2 with --from-scratch)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance scale (default 3)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("the whole path from a crawl (--from-scratch; resumes in --out)")
    g.add_argument("--from-scratch", action="store_true",
                   help="crawl -> text-to-image + SR pretraining -> dataset builder -> SuTI -> evaluation")
    from .from_scratch import FromScratchConfig

    d = FromScratchConfig()
    for name in ("shop_pages", "t2i_steps", "sr_steps", "suti_steps", "batch_size", "dreambooth_clusters",
                 "dreambooth_steps"):
        g.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                       help=f"default {getattr(d, name)}")
    p.set_defaults(func=cmd_demo)


def _check(args, from_scratch: bool) -> None:
    from .heldout import NUM_HELDOUT

    if not 1 <= args.subjects <= NUM_HELDOUT:
        raise ValueError(f"--subjects must be 1..{NUM_HELDOUT}, got {args.subjects}")
    if not 1 <= args.prompts <= 25:
        raise ValueError(f"--prompts must be 1..25, got {args.prompts}")
    if args.samples < 1 or args.steps < 1:
        raise ValueError(f"--samples and --steps must be >= 1, got {args.samples} and {args.steps}")
    if from_scratch:
        for name in ("shop_pages", "t2i_steps", "sr_steps", "suti_steps", "batch_size", "dreambooth_steps"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.dreambooth_clusters < 0:
            raise ValueError(f"--dreambooth-clusters must be >= 0, got {args.dreambooth_clusters}")
        if args.model:
            raise ValueError("--model and --from-scratch exclude each other: --from-scratch trains its own model")


def cmd_demo(args) -> int:
    from .showcase import print_report, run_demo

    from .from_scratch import FromScratchConfig

    scratch, d = args.from_scratch, FromScratchConfig()
    for name, quick, full in (("subjects", 3, d.eval_subjects), ("prompts", 4, d.eval_prompts),
                              ("samples", 1, d.eval_samples)):
        if getattr(args, name) is None:
            setattr(args, name, full if scratch else quick)
    _check(args, scratch)
    if scratch:
        from .from_scratch import print_summary, run_from_scratch

        cfg = FromScratchConfig(out=args.out or "runs/from_scratch", shop_pages=args.shop_pages,
                                t2i_steps=args.t2i_steps, sr_steps=args.sr_steps, suti_steps=args.suti_steps,
                                batch_size=args.batch_size, dreambooth_clusters=args.dreambooth_clusters,
                                dreambooth_steps=args.dreambooth_steps, eval_subjects=args.subjects,
                                eval_prompts=args.prompts, eval_samples=args.samples, sample_steps=args.steps,
                                guidance=args.guidance)
        print_summary(run_from_scratch(cfg))
        return 0
    print_report(run_demo(args.model, args.out or "runs/demo", args.subjects, args.prompts, args.samples,
                          args.steps, args.guidance, args.seed))
    return 0
