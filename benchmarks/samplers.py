"""Steps to quality: how many steps DDIM, DPM-Solver++(2M) and UniPC need on a trained model.

Two distances, both on the same prompts and starting noise, with classifier-free guidance and dynamic
thresholding as the pipeline samples:

- ``ode_rmse``: per seed, the RMS pixel difference (images in [0, 1]) to a 1000-step DDIM solution of the
  same probability-flow ODE from the same x_T. The deterministic samplers all approximate that one answer,
  so this is their integration error. The reference's own error is estimated by DDIM-500 vs DDIM-1000.
  ``ode_rmse`` is the mean over seeds; ``ode_rmse_median`` the median, which a few seeds whose trajectory
  passes near a fork (a small error there moves or reshapes the shape) cannot dominate.
- ``fd_to_ddpm250``: a Frechet distance between Gaussian fits of image features (2x2 average-pooled
  pixels, per-channel contrast, edge strength) of the sampler's images and of 250-step DDPM (ancestral)
  samples from other seeds. Its floor (``ddpm250_floor``) is the distance between two independent DDPM-250
  sets of the same size. There are no learned judges here, so the feature distance stands in for FID.

A sampler "reaches" a target at the fewest steps, among those run, whose distance is at or under it.
The targets are DDIM-50's own distances: DPM-Solver++ at <= 20 steps matching DDIM-50 would make it the
pipeline's default sampler.

Without ``--model`` the script first trains a small 16 px text-to-image stage for ``--train-minutes`` (or
exactly ``--train-steps``, the same model on any machine) on a synthetic distribution (a coloured disc or
square, named by the prompt, on a grey background) and says so in the JSON. ``--save-model DIR`` keeps it
as a pipeline folder, which ``--model DIR`` reuses.

    python benchmarks/samplers.py [--model FOLDER] [--train-steps 1943 | --train-minutes 6] [--images 256]
    python benchmarks/samplers.py --quick          # a minute or two: a smoke run, not a measurement
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp; see benchmarks/README.md

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retrieval.atomic import atomic_write_json  # noqa: E402

OUT = Path(__file__).parent / "results" / "samplers.json"
STEPS = (5, 10, 15, 20, 25, 50)
SAMPLERS = ("ddim", "dpmpp_2m", "unipc")
TRAINING_INFO = "benchmark_training.json"  # beside a saved world model: how this script trained it

# ----------------------------------------------------------------------------- synthetic world
COLOURS = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.3, 0.95),
           "yellow": (0.95, 0.85, 0.1), "purple": (0.6, 0.2, 0.8), "cyan": (0.1, 0.8, 0.85)}
SHAPES = ("disc", "square")
SIZE = 16
STAGE = {  # 16 px base stage: small enough to learn this world on a CPU in minutes
    "name": "base", "lowres_size": None,
    "unet": {"image_size": SIZE, "base_channels": 32, "channel_mults": [1, 2], "num_res_blocks": [1, 2],
             "self_attention": [False, True], "cross_attention": [False, True], "head_dim": 32,
             "text_embed_dim": 64},
}


def world_prompts() -> list[str]:
    return [f"a {c} {s}" for c in COLOURS for s in SHAPES]


def render(prompt_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images in [-1, 1] for prompt indices into ``world_prompts()``: an anti-aliased shape of the prompt's
    colour (jittered), random centre and size, on a random grey background."""
    n = prompt_ids.shape[0]
    colours = torch.tensor([COLOURS[c] for c in COLOURS for _ in SHAPES])[prompt_ids]
    is_disc = torch.tensor([s == "disc" for _ in COLOURS for s in SHAPES])[prompt_ids]
    u = torch.rand(n, 5, generator=generator)
    colour = (colours + 0.1 * (u[:, :3] - 0.5)).clamp(0, 1)
    grey = 0.25 + 0.5 * torch.rand(n, 1, generator=generator)
    centre = 4 + 8 * torch.rand(n, 2, generator=generator)
    radius = (2.5 + 3.0 * u[:, 3:4])[:, :, None]
    yy, xx = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    dy, dx = yy[None] - centre[:, 0, None, None], xx[None] - centre[:, 1, None, None]
    dist = torch.where(is_disc[:, None, None], (dx**2 + dy**2).sqrt(), torch.maximum(dx.abs(), dy.abs()))
    inside = (radius - dist + 0.5).clamp(0, 1)[:, None]  # one-pixel soft edge
    img = inside * colour[:, :, None, None] + (1 - inside) * grey[:, :, None, None]
    return img * 2 - 1


def train_world_model(minutes: float, batch: int = 64, lr: float = 1e-3, seed: int = 0, steps: int | None = None):
    """A fresh 16 px stage trained on the synthetic world (text dropped 10% of the time for guidance), for
    ``minutes``, or for exactly ``steps`` steps (the same model on any machine) when given."""
    from tqdm.auto import tqdm

    from suti.config import StageConfig
    from suti.pipeline import new_pipeline
    from suti.text import TextEncoder
    from suti.tiny import build_tiny_t5

    torch.manual_seed(seed)
    enc = TextEncoder.from_pretrained(build_tiny_t5(), max_length=16)
    pipe = new_pipeline(enc, [StageConfig.from_dict(STAGE)])
    stage = pipe.cascade.stages[0]
    prompts = world_prompts()
    emb, mask = pipe.encode_text(prompts)
    opt = torch.optim.AdamW(stage.parameters(), lr=lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in stage.parameters()]
    g = torch.Generator().manual_seed(seed)
    losses, t0, step = [], time.monotonic(), 0
    bar = tqdm(desc="training the world model", unit="step")
    stage.train()
    while (step < steps) if steps is not None else (time.monotonic() - t0 < minutes * 60):
        ids = torch.randint(len(prompts), (batch,), generator=g)
        loss = stage.training_loss(render(ids, g), emb[ids], mask[ids], generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, stage.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
        step += 1
        bar.update()
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    bar.close()
    with torch.no_grad():
        for e, p in zip(ema, stage.parameters()):
            p.copy_(e)
    stage.eval()
    k = max(1, len(losses) // 10)
    info = {"trained_here": True, "data": "synthetic: a coloured disc or square named by the prompt on a grey "
                                          "background, 16 px (benchmarks/samplers.py render)",
            "train_minutes": None if steps is not None else minutes,
            "train_seconds": round(time.monotonic() - t0, 1), "train_steps": step, "batch": batch, "lr": lr,
            "ema": 0.999,
            "params": stage.unet.num_parameters(), "loss_first_10pct": sum(losses[:k]) / k,
            "loss_last_10pct": sum(losses[-k:]) / k}
    return pipe, info


# ----------------------------------------------------------------------------- distances
def features(images: torch.Tensor) -> torch.Tensor:
    """Per-image features for the Frechet distance: 2x2 average-pooled pixels, per-channel standard
    deviation and mean edge strength, 16 numbers (few, so that a Gaussian fit to ~100 images is stable)."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    pooled = F.adaptive_avg_pool2d(x, 2).flatten(1)
    contrast = x.flatten(2).std(dim=2)
    edges = ((x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3)))
    return torch.cat([pooled, contrast, edges[:, None]], 1).double()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(Ca + Cb - 2 (Ca Cb)^1/2) between Gaussian fits of two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    # tr((Ca Cb)^1/2) = sum of sqrt of the eigenvalues of Ca^1/2 Cb Ca^1/2 (symmetric, PSD).
    w, v = torch.linalg.eigh(ca)
    ca_half = (v * w.clamp(min=0).sqrt()) @ v.T
    mid = torch.linalg.eigvalsh(ca_half @ cb @ ca_half).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + ca.trace() + cb.trace() - 2 * mid)


def per_image_rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The RMS difference of each image pair, pixels in [0, 1]."""
    return ((a.float() - b.float()) / 2).pow(2).flatten(1).mean(1).sqrt()


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the per-image RMS difference, pixels in [0, 1]."""
    return float(per_image_rms(a, b).mean())


def colour_judge(images: torch.Tensor, prompt_ids: torch.Tensor) -> float:
    """Synthetic world only: the fraction of images whose shape has the prompt's colour. The shape's colour
    is the mean of the pixels farthest from the border's mean colour; the nearest palette colour wins."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1).mean(-1)  # (N, 3)
    d = (x - border[:, :, None, None]).pow(2).sum(1).flatten(1)
    top = d.topk(12, dim=1).indices
    shape_colour = torch.gather(x.flatten(2), 2, top[:, None].expand(-1, 3, -1)).mean(-1)
    palette = torch.tensor(list(COLOURS.values()))
    guess = torch.cdist(shape_colour, palette).argmin(1)
    want = prompt_ids // len(SHAPES)
    return float((guess == want).float().mean())


# ----------------------------------------------------------------------------- the run
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a SuTIPipeline folder; its first (base) stage is sampled")
    ap.add_argument("--prompts", nargs="+", default=None, help="default: the synthetic world's 12 prompts")
    ap.add_argument("--train-minutes", type=float, default=6.0, help="without --model: training time")
    ap.add_argument("--train-steps", type=int, default=None,
                    help="without --model: train exactly this many steps instead (reproducible across machines)")
    ap.add_argument("--save-model", default=None, help="without --model: save the trained pipeline here")
    ap.add_argument("--images", type=int, default=96, help="images per set for the distribution distance")
    ap.add_argument("--ode-images", type=int, default=32, help="the first this many seeds get the per-seed distance")
    ap.add_argument("--train-only", action="store_true", help="train the world model, save it (--save-model), stop")
    ap.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    ap.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (pipeline default)")
    ap.add_argument("--reference-steps", type=int, default=1000)
    ap.add_argument("--ddpm-steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=256, help="images per model call")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 training minute, 32 images, 200/50-step "
                                                         "references (not a measurement)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.quick:
        args.train_minutes, args.images = min(args.train_minutes, 1.0), min(args.images, 32)
        args.train_steps = None if args.train_steps is None else min(args.train_steps, 100)
        args.ode_images = min(args.ode_images, 16)
        args.reference_steps, args.ddpm_steps = min(args.reference_steps, 200), min(args.ddpm_steps, 50)
        if args.out == str(OUT):
            args.out = str(OUT.with_name("samplers_quick.json"))
    torch.set_num_threads(args.threads)
    from tqdm.auto import tqdm

    from suti.sampling import Guidance, get_sampler

    for name in args.samplers:
        get_sampler(name)  # an unknown name fails here, before any work
    if args.model:
        from suti.pipeline import SuTIPipeline

        pipe = SuTIPipeline.from_pretrained(args.model)
        info_file = Path(args.model) / TRAINING_INFO
        # A world model this script trained and saved earlier: its record says so.
        model_info = (json.loads(info_file.read_text()) if info_file.is_file() else {"trained_here": False})
        model_info["folder"] = Path(args.model).name  # the name only: results carry no machine paths
        synthetic = args.prompts is None and model_info.get("trained_here", False)
        prompts = args.prompts or (world_prompts() if synthetic else
                                   ["a photo of a dog", "a red car on a street", "a bowl of fruit", "a house in snow"])
    else:
        pipe, model_info = train_world_model(args.train_minutes, steps=args.train_steps)
        if args.save_model:
            pipe.save_pretrained(args.save_model)
            atomic_write_json(Path(args.save_model) / TRAINING_INFO, model_info)
            model_info["saved_to"] = Path(args.save_model).name
        elif args.train_only:
            raise SystemExit("--train-only needs --save-model DIR")
        if args.train_only:
            print(json.dumps(model_info, indent=2))
            return model_info
        synthetic = args.prompts is None
        prompts = args.prompts or world_prompts()
    stage = pipe.cascade.stages[0]
    if stage.config.unet.lowres_cond:
        raise ValueError(f"stage {stage.name!r} is super-resolution; the benchmark samples a base stage")
    stage.eval()
    n, size = args.images, stage.image_size
    prompt_ids = torch.arange(n) % len(prompts)
    emb, mask = pipe.encode_text(prompts)
    guidance = Guidance(scale=args.guidance, mode="text")
    g = torch.Generator().manual_seed(1234)
    x_T = torch.randn(n, 3, size, size, generator=g)  # the ODE samplers' shared starting noise
    x_T_ddpm = [torch.randn(n, 3, size, size, generator=g) for _ in range(2)]  # other seeds: two DDPM sets

    m = min(args.ode_images, n)

    def run(sampler, steps, noise, seed=0):
        out = []
        gen = torch.Generator().manual_seed(seed)
        for i in range(0, noise.shape[0], args.batch):
            sl = slice(i, min(i + args.batch, noise.shape[0]))
            out.append(stage.sample(emb[prompt_ids[sl]], mask[prompt_ids[sl]], guidance=guidance, steps=steps,
                                    sampler=sampler, noise=noise[sl], generator=gen))
        return torch.cat(out)

    jobs = [("ddim", args.reference_steps, "ode_reference"), ("ddim", args.reference_steps // 2, "ode_reference_half"),
            ("ddpm", args.ddpm_steps, "ddpm_a"), ("ddpm", args.ddpm_steps, "ddpm_b")]
    jobs += [(s, k, f"{s}-{k}") for s in args.samplers for k in sorted(set(args.steps))]
    images, seconds = {}, {}
    for sampler, steps, key in tqdm(jobs, desc="sampling"):
        noise = x_T_ddpm[0] if key == "ddpm_a" else x_T_ddpm[1] if key == "ddpm_b" else x_T
        t0 = time.perf_counter()
        images[key] = run(sampler, steps, noise[:m] if key.startswith("ode_") else noise,
                          seed=1 if key == "ddpm_b" else 0)
        seconds[key] = time.perf_counter() - t0
        if not torch.isfinite(images[key]).all():
            raise RuntimeError(f"{key}: the sampler produced non-finite values")

    ref, feats_ddpm = images["ode_reference"], features(images["ddpm_a"])
    floor = frechet_distance(features(images["ddpm_b"]), feats_ddpm)
    table = {}
    for s in args.samplers:
        table[s] = {}
        for k in sorted(set(args.steps)):
            im = images[f"{s}-{k}"]
            per_seed = per_image_rms(im[:m], ref)
            row = {"ode_rmse": float(per_seed.mean()), "ode_rmse_median": float(per_seed.median()),
                   "fd_to_ddpm250": frechet_distance(features(im), feats_ddpm),
                   "denoiser_calls": k, "seconds": seconds[f"{s}-{k}"]}
            if synthetic:
                row["colour_accuracy"] = colour_judge(im, prompt_ids)
            table[s][str(k)] = row

    def reach(sampler, metric, target):
        ks = [int(k) for k, r in table[sampler].items() if r[metric] <= target]
        return min(ks) if ks else None

    targets = {}
    if "ddim" in table and "50" in table["ddim"]:
        targets = {k: table["ddim"]["50"][k] for k in ("ode_rmse", "ode_rmse_median", "fd_to_ddpm250")}
    # A distance resolves the samplers only if its spread over the table exceeds its noise (for the feature
    # distance: the floor between two DDPM sets); otherwise "reached at 5 steps" would mean nothing.
    fds = [r["fd_to_ddpm250"] for rows in table.values() for r in rows.values()]
    resolves = {"ode_rmse": True, "ode_rmse_median": True, "fd_to_ddpm250": bool(fds) and max(fds) - min(fds) > floor}
    steps_needed = {s: {m: (reach(s, m, v) if resolves[m] else None) for m, v in targets.items()}
                    for s in args.samplers}
    goal = steps_needed.get("dpmpp_2m", {})
    result = {
        "what": "steps each sampler needs to match DDIM-50: per-seed distance to the ODE solution and a feature "
                "Frechet distance to 250-step DDPM samples (see the module docstring)",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "model": model_info,
        "setup": {"images": n, "ode_images": m, "image_size": size, "prompts": prompts, "guidance": args.guidance,
                  "guidance_mode": "text", "threshold": "dynamic", "reference": f"ddim-{args.reference_steps}",
                  "ddpm_steps": args.ddpm_steps, "quick": args.quick, "time_grid": "uniform in t for every sampler"},
        "reference_error_estimate": rms(images["ode_reference_half"], ref),
        "ddpm250_floor": floor,
        "table": table,
        "targets": targets,
        "steps_needed": steps_needed,
        "metric_resolves_samplers": resolves,
        "goal_dpmpp_2m_within_20_steps": {m: (v is not None and v <= 20) if resolves[m] else None
                                          for m, v in goal.items()},
        "sampling_seconds": seconds,
    }
    if synthetic:
        result["colour_accuracy_ddpm250"] = colour_judge(images["ddpm_a"], prompt_ids)
        result["colour_accuracy_ode_reference"] = colour_judge(ref, prompt_ids[:m])
    atomic_write_json(args.out, result)
    print(f"{'sampler':10s} {'steps':>5s} {'ode_rmse':>9s} {'median':>9s} {'fd_ddpm':>9s}"
          + ("  colour" if synthetic else ""))
    for s, rows in table.items():
        for k, r in rows.items():
            print(f"{s:10s} {k:>5s} {r['ode_rmse']:9.4f} {r['ode_rmse_median']:9.4f} {r['fd_to_ddpm250']:9.4f}"
                  + (f"  {r['colour_accuracy']:.2f}" if synthetic else ""))
    print(f"DDPM-{args.ddpm_steps} floor {floor:.4f}; reference error ~{result['reference_error_estimate']:.5f}")
    print("steps needed to match DDIM-50:", steps_needed)
    print("wrote", args.out)
    return result


if __name__ == "__main__":
    main()
