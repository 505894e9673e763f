"""Cascade speed and memory on this machine, side by side in one run.

For each preset: train steps/s, sampling s/image (DDIM), peak resident memory, and the U-Net's
achieved GFLOP/s next to a plain ``torch.matmul`` GFLOP/s, so the distance to the machine's limit
is visible. Each preset runs in a fresh subprocess so its peak memory is its own.

    python benchmarks/cascade.py [--presets tiny-base32 tiny-base64 small-base64] [--out benchmarks/results/cascade.json]
    python benchmarks/cascade.py --device cuda --precision bf16 --presets small-base64 base64 sr256 \
        --out benchmarks/results/cascade_cuda.json      # the paper's shapes, on a GPU

On CUDA, peak memory is the allocator's peak (``torch.cuda.max_memory_allocated``) and timings wait for
the device (``torch.cuda.synchronize``); on the CPU it is the process's peak resident set.
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

import contextlib

import torch

OUT = Path(__file__).parent / "results" / "cascade.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(device: str = "cpu", precision: str = "fp32", repeats: int = 20) -> float:
    n = 1024 if device == "cpu" else 8192
    dtype = DTYPES[precision] if device != "cpu" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    dt = time.perf_counter() - t0
    return 2 * n**3 * repeats / dt / 1e9


def autocast(device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=DTYPES[precision])


def forward_flops(unet, args, kwargs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        unet(*args, **kwargs)
    return int(fc.get_total_flops())


def bench_preset(name: str, batch: int, train_steps: int, sample_steps: int, text_dim: int = 64,
                 device: str = "cpu", precision: str = "fp32") -> dict:
    from suti.cascade import Stage
    from suti.presets import preset
    from suti.sampling import Guidance

    torch.manual_seed(0)
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # interpreter + torch, no model
    cfg = preset(name, text_embed_dim=text_dim)
    stage = Stage(cfg).to(device)
    s = cfg.unet.image_size
    x0 = torch.rand(batch, 3, s, s, device=device) * 2 - 1
    te = torch.randn(batch, 16, text_dim, device=device)
    tm = torch.ones(batch, 16, dtype=torch.bool, device=device)
    lowres_kw = {}
    if cfg.unet.lowres_cond:
        lowres_kw = dict(lowres=torch.zeros(batch, 3, s, s, device=device), aug_level=torch.zeros(batch, device=device))
    fwd = forward_flops(stage.unet, (x0, torch.rand(batch, device=device), te, tm), lowres_kw)
    opt = torch.optim.AdamW(stage.parameters(), lr=1e-4)

    def step():
        with autocast(device, precision):
            loss = stage.training_loss(x0, te, tm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(train_steps):
        step()
    sync(device)
    train_dt = (time.perf_counter() - t0) / train_steps

    stage.eval()
    n_img = 2
    lowres = torch.zeros(n_img, 3, cfg.lowres_size, cfg.lowres_size, device=device) if cfg.unet.lowres_cond else None
    te_s, tm_s = te[:1].expand(n_img, -1, -1), tm[:1].expand(n_img, -1)  # the training batch may be 1
    with autocast(device, precision):
        stage.sample(te_s, tm_s, lowres=lowres, steps=1, guidance=Guidance(scale=5.0))  # warm-up
        sync(device)
        t0 = time.perf_counter()
        stage.sample(te_s, tm_s, lowres=lowres, steps=sample_steps, guidance=Guidance(scale=5.0))
        sync(device)
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
        "peak_mem_mb": (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
                        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "baseline_rss_mb": baseline_mb,
    }


def default_batch(name: str) -> int:
    from suti.presets import preset

    size = preset(name).unet.image_size
    return 8 if size <= 64 else 4 if size <= 256 else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+", default=["tiny-base32", "tiny-base64", "small-base64", "tiny-sr64"])
    ap.add_argument("--batch", type=int, default=None,
                    help="training batch (default: 8 up to 64 px, 4 at 256 px, 1 at 1024 px)")
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--precision", default="fp32", choices=list(DTYPES), help="autocast dtype (fp32: none)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.child:  # one preset, in its own process
        print(json.dumps(bench_preset(args.child, args.batch, args.train_steps, args.sample_steps,
                                      device=args.device, precision=args.precision)))
        return

    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "device": device_name, "precision": args.precision},
        "matmul_gflops": matmul_gflops(args.device, args.precision),
        "presets": {},
        "notes": {
            "train_steps_per_s": "one optimisation step of the bare stage (training_loss, backward, AdamW) on a "
                                 "fixed batch: the model's cost, without the Trainer's data loading, EMA or accelerate",
            "sample_s_per_image": "DDIM with classifier-free guidance (2 branches per step), 2 images per call",
            "peak_mem_mb": "CPU: the process's peak resident set (baseline_rss_mb of it is the interpreter and torch "
                           "before the model exists); CUDA: torch.cuda.max_memory_allocated",
            "achieved_gflops": "FLOPs counted by torch.utils.flop_counter for one forward, x3 for forward+backward, "
                               "over the measured step time",
        },
    }
    from tqdm.auto import tqdm

    for name in tqdm(args.presets, desc="presets"):
        batch = args.batch or default_batch(name)
        cmd = [sys.executable, __file__, "--child", name, "--batch", str(batch), "--train-steps",
               str(args.train_steps), "--sample-steps", str(args.sample_steps), "--threads", str(args.threads),
               "--device", args.device, "--precision", args.precision]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:  # e.g. out of memory: record why and go on with the other presets
            result["presets"][name] = {"batch": batch, "error": proc.stderr.strip().splitlines()[-1:]}
            print(f"{name}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["fraction_of_matmul_peak"] = r["achieved_gflops"] / result["matmul_gflops"]
        result["presets"][name] = r
    result["matmul_gflops_after"] = matmul_gflops(args.device, args.precision)  # the machine's state may drift during the run
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
