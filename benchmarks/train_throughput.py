"""Training throughput of one U-Net under the trainer's speed options, side by side in one run.

Variants (each its own copy of the same stage, seed 0, its own AdamW):
- default: what the trainer did before these options (NCHW, torch's AdamW choice, SDPA's own backend choice);
- foreach_adamw / fused_adamw: ``optim.implementation: foreach | fused``;
- channels_last: ``channels_last: true`` (NHWC weights and images);
- sdpa_math / sdpa_flash: attention forced to one SDPA backend (the trainer leaves the choice to torch);
- compile: ``compile: true`` (torch.compile of the U-Net: inductor fuses GroupNorm, SiLU and the
  elementwise tails of the blocks); its compile time is reported apart;
- best: channels_last + fused AdamW + compile.

The variants take turns, round after round, each timed block between two ``torch.matmul`` probes, so a
change of load moves all alike; the report gives medians, each variant's fraction of the matmul rate
(FLOPs counted by torch's FlopCounterMode: a training step is about 3 forward passes), and its speed-up
over ``default`` as the median of per-round ratios. OpenMP threads wait passively (recorded).

    python benchmarks/train_throughput.py                          # small-base64, batch 8 -> results/train_throughput.json
    python benchmarks/train_throughput.py --presets tiny-base64 small-base64 --no-compile
    python benchmarks/train_throughput.py --device cuda --precision bf16 --presets base64   # on a GPU
    python benchmarks/train_throughput.py --quick                  # smoke run: measures nothing
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime

import argparse  # noqa: E402
import contextlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages, before this folder's retrieval.py
from cascade import autocast, forward_flops, matmul_gflops, sync  # noqa: E402

from retrieval.atomic import atomic_write_json  # noqa: E402

OUT = Path(__file__).parent / "results" / "train_throughput.json"
VARIANTS = ("default", "foreach_adamw", "fused_adamw", "channels_last", "sdpa_math", "sdpa_flash", "compile", "best")


def sdpa_backend(name: str | None):
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([{"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}[name]])


class Variant:
    def __init__(self, name: str, preset_name: str, batch: int, device: str, precision: str, text_dim: int = 64):
        from suti.cascade import Stage
        from suti.presets import preset
        from suti.training.config import OptimSpec
        from suti.training.trainer import build_optimizer

        self.name, self.device, self.precision = name, device, precision
        torch.manual_seed(0)
        cfg = preset(preset_name, text_embed_dim=text_dim)
        self.stage = Stage(cfg).to(device)
        self.channels_last = name in ("channels_last", "best")
        self.sdpa = {"sdpa_math": "math", "sdpa_flash": "flash"}.get(name)
        impl = {"foreach_adamw": "foreach", "fused_adamw": "fused", "best": "fused"}.get(name, "auto")
        s = cfg.unet.image_size
        g = torch.Generator().manual_seed(0)
        self.x0 = (torch.rand(batch, 3, s, s, generator=g) * 2 - 1).to(device)
        self.te = torch.randn(batch, 16, text_dim, generator=g).to(device)
        self.tm = torch.ones(batch, 16, dtype=torch.bool, device=device)
        self.lowres = {}
        if cfg.unet.lowres_cond:
            self.lowres = dict(lowres=torch.zeros(batch, 3, s, s, device=device))
        self.fwd_flops = forward_flops(self.stage.unet, (self.x0, torch.rand(batch, device=device), self.te, self.tm),
                                       dict(self.lowres, aug_level=torch.zeros(batch, device=device))
                                       if self.lowres else {})
        if self.channels_last:
            self.stage.to(memory_format=torch.channels_last)
            self.x0 = self.x0.contiguous(memory_format=torch.channels_last)
        self.opt = build_optimizer(self.stage, OptimSpec(lr=1e-4, implementation=impl))
        self.compile_s = None
        if name in ("compile", "best"):
            self.stage.unet.compile()
            t0 = time.perf_counter()
            self.step()  # the first step compiles forward and backward
            sync(device)
            self.compile_s = time.perf_counter() - t0

    def step(self):
        self.stage.train()
        with sdpa_backend(self.sdpa), autocast(self.device, self.precision):
            loss = self.stage.training_loss(self.x0, self.te, self.tm, **self.lowres)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def block(self, steps: int) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return (time.perf_counter() - t0) / steps


def bench(preset_name: str, batch: int, variants: list[str], steps: int, repeats: int, device: str,
          precision: str) -> dict:
    probe_precision = "fp32" if device == "cpu" else precision
    runs, errors = {}, {}
    for name in variants:
        try:
            v = Variant(name, preset_name, batch, device, precision)
            v.block(1)  # warm-up
            runs[name] = v
        except Exception as exc:  # noqa: BLE001 - a backend this machine lacks is reported, not fatal
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    rounds = []
    for _ in range(repeats):
        row = {}
        for name, v in runs.items():
            a = matmul_gflops(device, probe_precision)
            dt = v.block(steps)
            b = matmul_gflops(device, probe_precision)
            achieved = 3 * v.fwd_flops / dt / 1e9
            row[name] = {"step_s": dt, "achieved_gflops": achieved, "matmul_gflops": (a + b) / 2,
                         "fraction_of_matmul": achieved / ((a + b) / 2)}
        rounds.append(row)
    out = {"preset": preset_name, "batch": batch, "params": next(iter(runs.values())).stage.unet.num_parameters()
           if runs else None, "forward_gflop_per_image": (next(iter(runs.values())).fwd_flops / batch / 1e9)
           if runs else None, "variants": {}, "errors": errors}
    for name, v in runs.items():
        med = lambda k: statistics.median(r[name][k] for r in rounds)  # noqa: E731, B023
        res = {"steps_per_s": 1 / med("step_s"), "achieved_gflops": med("achieved_gflops"),
               "matmul_gflops": med("matmul_gflops"), "fraction_of_matmul": med("fraction_of_matmul"),
               "compile_s": v.compile_s}
        if "default" in runs:
            res["speedup_vs_default"] = statistics.median(r["default"]["step_s"] / r[name]["step_s"] for r in rounds)
        out["variants"][name] = res
    out["rounds"] = rounds
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["small-base64"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--no-compile", action="store_true", help="leave out compile and best")
    ap.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; medians are reported")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny-base32, batch 2, 1 step, 1 round")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    variants = [v for v in args.variants if not (args.no_compile and v in ("compile", "best"))]
    if args.quick:
        args.presets, args.batch, args.steps, args.repeats = ["tiny-base32"], 2, 1, 1
        variants = [v for v in variants if v not in ("compile", "best")]
    results = {}
    for name in args.presets:
        print(f"{name}: {', '.join(variants)}", flush=True)
        results[name] = bench(name, args.batch, variants, args.steps, args.repeats, args.device, args.precision)
        for v, r in results[name]["variants"].items():
            extra = f", compile {r['compile_s']:.0f} s" if r["compile_s"] else ""
            print(f"  {v:14s} {r['steps_per_s']:6.2f} steps/s  {r['fraction_of_matmul']:.0%} of matmul  "
                  f"x{r.get('speedup_vs_default', 1):.2f}{extra}", flush=True)
        for v, e in results[name]["errors"].items():
            print(f"  {v:14s} not run: {e}")
    out = Path(args.out) if args.out else (None if args.quick else OUT)
    doc = {"command": "python benchmarks/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads,
                       "torch": torch.__version__, "device": args.device, "precision": args.precision,
                       "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_start": load_start,
                       "load_average_end": [round(x, 2) for x in os.getloadavg()]},
           "steps_per_block": args.steps, "repeats": args.repeats, "results": results}
    if out is not None:
        atomic_write_json(out, doc)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
