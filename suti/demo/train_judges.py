"""Train the world judge on renders of training subjects, and validate it on the 30 held-out subjects.

    OMP_NUM_THREADS=1 python -m suti.demo.train_judges --out suti/demo/assets/judge
    # 4 rounds x 40,000 fresh renders x 2 epochs: 8 minutes on an idle CPU core, up to 25 on a busy one

Validation (the bar a judge must clear to be used): renders of the held-out subjects, which the judge
never saw, in fresh random contexts. Identity: top-1 retrieval among the 30 (query: a render in a new
context; gallery: the subject's exemplars) >= 0.95. Attributes: accuracy >= 0.95.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .heldout import NUM_HELDOUT, heldout_subject, heldout_subjects, training_subject
from .judge_weights import SHIPPED_JUDGE, load_world_judge, save_world_judge
from .judges import COLOUR_FACTORS, JudgeConfig, WorldJudge, attribute_accuracy, identity_retrieval_top1
from .world import ATTRIBUTES, IDENTITY_FACTORS, random_context, render

IDENTITY_BAR = 0.95
ATTRIBUTE_BAR = 0.95


def render_training_set(n: int, seed: int, size: int = 32, progress: bool = True):
    """n renders of random training subjects in random contexts -> (uint8 images (n, size, size, 3),
    identity factor indices, attribute indices, colour-visible mask)."""
    rng = random.Random(f"judge-train:{seed}")
    images = np.zeros((n, size, size, 3), np.uint8)
    factors = {k: np.zeros(n, np.int64) for k in IDENTITY_FACTORS}
    attrs = {k: np.zeros(n, np.int64) for k in ATTRIBUTES}
    for i in tqdm(range(n), desc="rendering judge training set", disable=not progress):
        subject = training_subject(rng)
        ctx = random_context(rng, p_specified=0.65)
        images[i] = np.asarray(render(subject, ctx, size=size, seed=rng.randrange(2**31), jitter=0.05))
        for k, v in subject.factors().items():
            factors[k][i] = IDENTITY_FACTORS[k].index(v)
        for k, v in vars(ctx.resolved(subject)).items():
            attrs[k][i] = ATTRIBUTES[k].index(v)
    colour_visible = attrs["style"] != ATTRIBUTES["style"].index("sketch")
    return images, factors, attrs, colour_visible


def _factor_visible(factors: dict[str, torch.Tensor]) -> torch.Tensor:
    """A plain subject shows no accent colour: its accent label is not trained on (nor are the colour
    factors of a pencil sketch)."""
    return factors["pattern"] != IDENTITY_FACTORS["pattern"].index("plain")


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Robustness to what a diffusion model draws: a little blur and noise."""
    n = x.shape[0]
    blur = torch.rand(n, 1, 1, 1, generator=gen) < 0.3
    soft = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(blur, 0.5 * x + 0.5 * soft, x)
    sigma = torch.rand(n, 1, 1, 1, generator=gen) * 0.06
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def train_judge(n_train: int = 40000, epochs: int = 2, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                config: JudgeConfig | None = None, init: WorldJudge | None = None,
                progress: bool = True) -> WorldJudge:
    """Train a judge (or continue training `init`) on n_train fresh renders for `epochs` epochs."""
    torch.manual_seed(seed)
    images, factors, attrs, colour_visible = render_training_set(n_train, seed, progress=progress)
    judge = init if init is not None else WorldJudge(config)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    f_all = {k: torch.from_numpy(v) for k, v in factors.items()}
    a_all = {k: torch.from_numpy(v) for k, v in attrs.items()}
    cv_all = torch.from_numpy(colour_visible)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(n_train / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="training judge", disable=not progress)
    judge.train()
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=gen)
        for start in range(0, n_train, batch_size):
            idx = order[start:start + batch_size]
            x = _augment(x_all[idx].float() / 255.0, gen)
            out = judge(x)
            colour_seen = cv_all[idx]
            accent_seen = _factor_visible({k: v[idx] for k, v in f_all.items()}) & colour_seen
            loss = sum(F.cross_entropy(out["identity"][k], f_all[k][idx]) for k in f_all if k not in COLOUR_FACTORS)
            for k, seen in (("secondary", colour_seen), ("accent", accent_seen)):
                if seen.any():
                    loss = loss + F.cross_entropy(out["identity"][k][seen], f_all[k][idx][seen])
            for k in a_all:
                if k == "colour":  # a pencil sketch has no colour to read
                    mask = cv_all[idx]
                    if mask.any():
                        loss = loss + F.cross_entropy(out["attributes"][k][mask], a_all[k][idx][mask])
                else:
                    loss = loss + F.cross_entropy(out["attributes"][k], a_all[k][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return judge.eval()


def validation_set(seed: int, size: int = 32, per_subject: int = 10):
    """Held-out renders in fresh random contexts: (images, subject indices, specified labels, scorable
    resolved labels). Resolved labels name every attribute (defaults included) except the colour of a
    pencil sketch, which has none to see."""
    rng = random.Random(f"judge-val:{seed}")
    images, subjects, specified, resolved = [], [], [], []
    for i, subject in enumerate(heldout_subjects()):
        for _ in range(per_subject):
            ctx = random_context(rng, p_specified=0.65)
            images.append(render(subject, ctx, size=size, seed=rng.randrange(2**31), jitter=0.05))
            subjects.append(i)
            specified.append(ctx.specified())
            full = vars(ctx.resolved(subject)).copy()
            if full["style"] == "sketch":
                full.pop("colour")
            resolved.append(full)
    return images, subjects, specified, resolved


def validate_judge(judge: WorldJudge, seed: int = 12345, size: int = 32, per_subject: int = 10) -> dict:
    """Identity top-1 among the 30 held-out subjects and attribute accuracy on fresh held-out renders,
    plus the same on the benchmark's own 25 prompts per subject."""
    judge.eval()
    galleries = [heldout_subject(i).exemplar_images(size) for i in range(NUM_HELDOUT)]
    images, subjects, specified, resolved = validation_set(seed, size, per_subject)
    bench_images, bench_subjects, bench_labels = [], [], []
    for i in range(NUM_HELDOUT):
        hs = heldout_subject(i)
        bench_images += hs.target_images(size)
        bench_subjects += [i] * len(hs.prompts)
        bench_labels += [p.labels for p in hs.prompts]
    return {
        "size": size, "seed": seed, "queries": len(images),
        "identity_top1": identity_retrieval_top1(judge, images, subjects, galleries),
        "attributes_specified": attribute_accuracy(judge, images, specified),
        "attributes_all": attribute_accuracy(judge, images, resolved),
        "benchmark_identity_top1": identity_retrieval_top1(judge, bench_images, bench_subjects, galleries),
        "benchmark_attributes": attribute_accuracy(judge, bench_images, bench_labels),
    }


def passes_bar(metrics: dict) -> bool:
    return (metrics["identity_top1"] >= IDENTITY_BAR and metrics["attributes_all"]["overall"] >= ATTRIBUTE_BAR
            and metrics["benchmark_identity_top1"] >= IDENTITY_BAR
            and metrics["benchmark_attributes"]["overall"] >= ATTRIBUTE_BAR)


def train_judge_rounds(rounds: int = 4, n_train: int = 40000, epochs: int = 2, batch_size: int = 64,
                       lr: float = 2e-3, later_lr: float = 1e-3, seed: int = 0, init: WorldJudge | None = None,
                       progress: bool = True) -> WorldJudge:
    """`rounds` rounds of training, each on n_train fresh renders (seed, seed + 1, ...), the first at lr and
    the later ones at later_lr: more distinct renders than memory holds at once."""
    judge = init
    for r in range(rounds):
        judge = train_judge(n_train=n_train, epochs=epochs, batch_size=batch_size,
                            lr=lr if r == 0 and init is None else later_lr, seed=seed + r,
                            init=judge.train() if judge is not None else None, progress=progress)
    return judge


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(SHIPPED_JUDGE), help="folder to write config.json + model.safetensors")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of fresh renders")
    ap.add_argument("--n-train", type=int, default=40000, help="renders per round")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per round")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the first round")
    ap.add_argument("--later-lr", type=float, default=1e-3, help="peak learning rate of the later rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", help="a judge folder to continue training from (fresh renders: use another --seed)")
    args = ap.parse_args(argv)
    t0 = time.time()
    init = load_world_judge(args.init).train() if args.init else None
    judge = train_judge_rounds(rounds=args.rounds, n_train=args.n_train, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, later_lr=args.later_lr, seed=args.seed,
                               init=init)
    train_s = time.time() - t0
    metrics = {"train_seconds": round(train_s, 1), **{k: v for k, v in vars(args).items() if k != "out"},
               "validation": {str(s): validate_judge(judge, size=s) for s in (32, 64)}}
    metrics["passes_bar"] = all(passes_bar(m) for m in metrics["validation"].values())
    save_world_judge(judge, args.out, metrics)
    print(json.dumps(metrics, indent=2))
    if not metrics["passes_bar"]:
        print(f"WARNING: the judge misses the bar (identity >= {IDENTITY_BAR}, attributes >= {ATTRIBUTE_BAR}); "
              "do not use it")
    return metrics


if __name__ == "__main__":
    main()
