"""Cascade speed and memory on this machine, side by side in one run.

For each preset: train steps/s, sampling s/image (DDIM), peak memory, and the U-Net's achieved GFLOP/s
next to a plain ``torch.matmul`` GFLOP/s, so the distance to the machine's limit is visible. Each preset
runs in a fresh subprocess so its peak memory is its own.

Timing on a shared machine: every preset runs ``--repeats`` rounds of (matmul probe, training block,
matmul probe, sampling call) and reports medians; a round's fraction of the matmul peak divides by the
probes taken on either side of that round's timing, so a change of load during the run moves both alike.
OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set): spinning waits made a loaded
machine about 10x slower. The policy is recorded in the JSON.

    python benchmarks/cascade.py [--presets tiny-base32 tiny-base64 small-base64]   # -> results/cascade.json
    python benchmarks/cascade.py --device cuda --precision bf16 --presets small-base64 base64 sr256 \
        --out benchmarks/results/cascade_cuda.json      # the paper's shapes, on a GPU
    python benchmarks/cascade.py --quick               # smoke run (seconds): checks the script, measures nothing

On CUDA, peak memory is the allocator's peak (``torch.cuda.max_memory_allocated``) and timings wait for
the device (``torch.cuda.synchronize``). On the CPU it is the child process's own peak resident set
(``VmHWM``; ``ru_maxrss`` would carry the parent's high-water mark across fork and exec).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retrieval.atomic import atomic_write_json  # noqa: E402

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


def own_memory_mb() -> dict:
    """This process's current and peak resident set (MB) from /proc (Linux): its own, since exec gives the
    process a fresh address space. Elsewhere ru_maxrss, which may include the parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        kb = lambda k: int(fields[k].split()[0])  # noqa: E731
        return {"rss_mb": kb("VmRSS") / 1024.0, "peak_mb": kb("VmHWM") / 1024.0, "source": "VmHWM"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 2**20)
    return {"rss_mb": None, "peak_mb": peak, "source": "ru_maxrss"}


def autocast(device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=DTYPES[precision])


def forward_flops(unet, args, kwargs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        unet(*args, **kwargs)
    return int(fc.get_total_flops())


def bench_preset(name: str, batch: int, train_steps: int, sample_steps: int, repeats: int, text_dim: int = 64,
                 device: str = "cpu", precision: str = "fp32") -> dict:
    from suti.cascade import Stage
    from suti.presets import preset
    from suti.sampling import Guidance

    torch.manual_seed(0)
    baseline = own_memory_mb()  # interpreter + torch, no model yet
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

    def train_block():
        stage.train()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(train_steps):
            with autocast(device, precision):
                loss = stage.training_loss(x0, te, tm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        return (time.perf_counter() - t0) / train_steps

    n_img = 2
    lowres = torch.zeros(n_img, 3, cfg.lowres_size, cfg.lowres_size, device=device) if cfg.unet.lowres_cond else None
    te_s, tm_s = te[:1].expand(n_img, -1, -1), tm[:1].expand(n_img, -1)  # the training batch may be 1

    def sample_call(steps):
        stage.eval()
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            stage.sample(te_s, tm_s, lowres=lowres, steps=steps, guidance=Guidance(scale=5.0, mode="text"))
        sync(device)
        return (time.perf_counter() - t0) / n_img

    # Warm-up, then rounds that interleave the matmul probe with the model's timings.
    train_block()
    sample_call(1)
    rounds = []
    for _ in range(repeats):
        probe_a = matmul_gflops(device, "fp32" if device == "cpu" else precision)
        train_dt = train_block()
        probe_b = matmul_gflops(device, "fp32" if device == "cpu" else precision)
        sample_dt = sample_call(sample_steps)
        probe_c = matmul_gflops(device, "fp32" if device == "cpu" else precision)
        # A train step is ~3 forward passes of work (forward + backward); guided sampling runs 2 branches per step.
        train_gflops = 3 * fwd / train_dt / 1e9
        sample_gflops = 2 * sample_steps * (fwd / batch) / sample_dt / 1e9
        rounds.append({"train_step_s": train_dt, "sample_s_per_image": sample_dt,
                       "matmul_gflops_around_train": [probe_a, probe_b],
                       "matmul_gflops_around_sample": [probe_b, probe_c],
                       "achieved_gflops": train_gflops, "achieved_gflops_sampling": sample_gflops,
                       "fraction_of_matmul_peak": train_gflops / ((probe_a + probe_b) / 2),
                       "fraction_of_matmul_peak_sampling": sample_gflops / ((probe_b + probe_c) / 2)})
    med = lambda k: statistics.median(r[k] for r in rounds)  # noqa: E731
    train_dt = med("train_step_s")
    mem = own_memory_mb()
    return {
        "params": stage.unet.num_parameters(),
        "image_size": s,
        "batch": batch,
        "forward_gflop_per_image": fwd / batch / 1e9,
        "train_steps_per_s": 1.0 / train_dt,
        "train_images_per_s": batch / train_dt,
        "sample_steps": sample_steps,
        "guidance_branches": 2,
        "sample_s_per_image": med("sample_s_per_image"),
        "achieved_gflops": med("achieved_gflops"),
        "achieved_gflops_sampling": med("achieved_gflops_sampling"),
        "fraction_of_matmul_peak": med("fraction_of_matmul_peak"),
        "fraction_of_matmul_peak_sampling": med("fraction_of_matmul_peak_sampling"),
        "matmul_gflops": statistics.median(p for r in rounds for p in r["matmul_gflops_around_train"]
                                           + r["matmul_gflops_around_sample"][1:]),
        "peak_mem_mb": (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else mem["peak_mb"]),
        "peak_rss_mb": mem["peak_mb"],
        "baseline_rss_mb": baseline["rss_mb"],
        "memory_source": mem["source"],
        "repeats": repeats,
        "train_steps_per_round": train_steps,
        "rounds": rounds,
    }


def default_batch(name: str) -> int:
    from suti.presets import preset

    size = preset(name).unet.image_size
    return 8 if size <= 64 else 4 if size <= 256 else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny-base32", "tiny-base64", "small-base64", "tiny-sr64"])
    ap.add_argument("--batch", type=int, default=None,
                    help="training batch (default: 8 up to 64 px, 4 at 256 px, 1 at 1024 px)")
    ap.add_argument("--train-steps", type=int, default=10, help="training steps per timed block")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per preset; medians are reported")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--precision", default="fp32", choices=list(DTYPES), help="autocast dtype (fp32: none)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny-base32, 2 train steps, 3 sampling steps, "
                                                         "2 rounds; writes cascade_quick.json unless --out is given")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.presets, args.train_steps, args.sample_steps, args.repeats = ["tiny-base32"], 2, 3, 2
    out = Path(args.out or (OUT.with_name("cascade_quick.json") if args.quick else OUT))
    torch.set_num_threads(args.threads)

    if args.child:  # one preset, in its own process
        print(json.dumps(bench_preset(args.child, args.batch, args.train_steps, args.sample_steps, args.repeats,
                                      device=args.device, precision=args.precision)))
        return

    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "device": device_name, "precision": args.precision,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "setup": {"repeats": args.repeats, "train_steps_per_round": args.train_steps,
                  "sample_steps": args.sample_steps, "quick": args.quick},
        "presets": {},
        "notes": {
            "train_steps_per_s": "one optimisation step of the bare stage (training_loss, backward, AdamW) on a "
                                 "fixed batch: the model's cost, without the Trainer's data loading, EMA or "
                                 "accelerate; median over rounds of the mean step time in a block",
            "sample_s_per_image": "DDIM with classifier-free guidance (2 branches per step), 2 images per call; "
                                  "median over rounds",
            "peak_mem_mb": "CPU: the child process's own peak resident set (VmHWM; baseline_rss_mb of it is the "
                           "interpreter and torch before the model exists); CUDA: torch.cuda.max_memory_allocated",
            "achieved_gflops": "FLOPs counted by torch.utils.flop_counter for one forward, x3 for forward+backward, "
                               "over the measured step time",
            "fraction_of_matmul_peak": "per round, achieved GFLOP/s over the mean of the matmul probes taken just "
                                       "before and after that round's timing (same process, same threads); median",
        },
    }
    from tqdm.auto import tqdm

    for name in tqdm(args.presets, desc="presets"):
        batch = args.batch or default_batch(name)
        cmd = [sys.executable, __file__, "--child", name, "--batch", str(batch), "--train-steps",
               str(args.train_steps), "--sample-steps", str(args.sample_steps), "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--device", args.device, "--precision", args.precision]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:  # e.g. out of memory: record why and go on with the other presets
            result["presets"][name] = {"batch": batch, "error": proc.stderr.strip().splitlines()[-1:]}
            print(f"{name}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        result["presets"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    atomic_write_json(out, result)
    print(json.dumps({k: {m: v.get(m) for m in ("train_steps_per_s", "sample_s_per_image", "fraction_of_matmul_peak",
                                                "peak_mem_mb", "baseline_rss_mb", "error")}
                      for k, v in result["presets"].items()}, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
