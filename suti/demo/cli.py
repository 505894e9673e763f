"""``suti demo``: the subcommand. The demo's modules are imported only when it runs."""
from __future__ import annotations


def add_subparser(sub) -> None:
    p = sub.add_parser("demo", help="the shipped world model draws held-out subjects from 3 photos: grid, HTML, metrics",
                       description="The shipped world model draws held-out subjects (never seen in training) from "
                                   "their photos, next to text-to-image samples of the same prompts, judged by the "
                                   "world's judges. Writes grid.png, index.html and metrics.json.")
    p.add_argument("--model", default=None, help="pipeline folder (default: the shipped world model)")
    p.add_argument("--out", default="runs/demo", help="folder for grid.png, index.html, metrics.json")
    p.add_argument("--subjects", type=int, default=3, help="how many held-out subjects, 1-30 (default 3)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per subject, 1-25, spread over the skills")
    p.add_argument("--samples", type=int, default=1, help="samples per prompt, each from its own noise")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance scale (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .showcase import NUM_HELDOUT, print_report, run_demo

    if not 1 <= args.subjects <= NUM_HELDOUT:
        raise ValueError(f"--subjects must be 1..{NUM_HELDOUT}, got {args.subjects}")
    if not 1 <= args.prompts <= 25:
        raise ValueError(f"--prompts must be 1..25, got {args.prompts}")
    if args.samples < 1 or args.steps < 1:
        raise ValueError(f"--samples and --steps must be >= 1, got {args.samples} and {args.steps}")
    print_report(run_demo(args.model, args.out, args.subjects, args.prompts, args.samples, args.steps,
                          args.guidance, args.seed))
    return 0
