"""Cascade speed and memory on this machine, side by side in one run.

For each preset: train steps/s, sampling s/image (DDIM), peak resident memory, and the U-Net's
achieved GFLOP/s next to a plain ``torch.matmul`` GFLOP/s, so the distance to the machine's limit
is visible. Each preset runs in a fresh subprocess so its peak memory is its own.

    python benchmarks/cascade.py [--presets tiny-base32 tiny-base64 small-base64] [--out benchmarks/results/cascade.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "results" / "cascade.json"


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    dt = time.perf_counter() - t0
    return 2 * n**3 * repeats / dt / 1e9


def forward_flops(unet, args, kwargs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        unet(*args, **kwargs)
    return int(fc.get_total_flops())


def bench_preset(name: str, batch: int, train_steps: int, sample_steps: int, text_dim: int = 64) -> dict:
    from suti.cascade import Stage
    from suti.presets import preset
    from suti.sampling import Guidance

    torch.manual_seed(0)
    cfg = preset(name, text_embed_dim=text_dim)
    stage = Stage(cfg)
    s = cfg.unet.image_size
    x0 = torch.rand(batch, 3, s, s) * 2 - 1
    te, tm = torch.randn(batch, 16, text_dim), torch.ones(batch, 16, dtype=torch.bool)
    lowres_kw = {}
    if cfg.unet.lowres_cond:
        lowres_kw = dict(lowres=torch.zeros(batch, 3, s, s), aug_level=torch.zeros(batch))
    fwd = forward_flops(stage.unet, (x0, torch.rand(batch), te, tm), lowres_kw)
    opt = torch.optim.AdamW(stage.parameters(), lr=1e-4)

    def step():
        loss = stage.training_loss(x0, te, tm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(train_steps):
        step()
    train_dt = (time.perf_counter() - t0) / train_steps

    stage.eval()
    n_img = 2
    lowres = torch.zeros(n_img, 3, cfg.lowres_size, cfg.lowres_size) if cfg.unet.lowres_cond else None
    stage.sample(te[:n_img], tm[:n_img], lowres=lowres, steps=1, guidance=Guidance(scale=5.0))  # warm-up
    t0 = time.perf_counter()
    stage.sample(te[:n_img], tm[:n_img], lowres=lowres, steps=sample_steps, guidance=Guidance(scale=5.0))
    sample_dt = (time.perf_counter() - t0) / n_img
    # A train step is ~3 forward passes of work (forward + backward); guided sampling runs 2 branches per step.
    train_gflops = 3 * fwd / train_dt / 1e9
    sample_gflops = (2 * sample_steps * fwd / batch * n_img) / (sample_dt * n_img) / 1e9
    return {
        "params": stage.unet.num_parameters(),
        "image_size": s,
        "batch": batch,
        "forward_gflop_per_image": fwd / batch / 1e9,
        "train_steps_per_s": 1.0 / train_dt,
        "train_images_per_s": batch / train_dt,
        "sample_steps": sample_steps,
        "guidance_branches": 2,
        "sample_s_per_image": sample_dt,
        "achieved_gflops": train_gflops,
        "achieved_gflops_sampling": sample_gflops,
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+", default=["tiny-base32", "tiny-base64", "small-base64", "tiny-sr64"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.child:  # one preset, in its own process
        print(json.dumps(bench_preset(args.child, args.batch, args.train_steps, args.sample_steps)))
        return

    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "device": "cpu"},
        "matmul_gflops": matmul_gflops(),
        "presets": {},
    }
    from tqdm.auto import tqdm

    for name in tqdm(args.presets, desc="presets"):
        cmd = [sys.executable, __file__, "--child", name, "--batch", str(args.batch), "--train-steps",
               str(args.train_steps), "--sample-steps", str(args.sample_steps), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        r["fraction_of_matmul_peak"] = r["achieved_gflops"] / result["matmul_gflops"]
        result["presets"][name] = r
    result["matmul_gflops_after"] = matmul_gflops()  # the machine's state may drift during the run
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
