"""SuTI's Efficient U-Net against imagen-pytorch's Unet (the best-known public Imagen), same machine, same run.

Two sizes, because the comparison changes with size: ``tiny`` (SuTI's tiny-base64 preset, about 4-5M
parameters each) and ``17M`` (about 16-18M each). Both sides get the same job: 64 px images, 64-d text
embeddings of 16 tokens, self- and cross-attention at the two lowest-resolution levels, head width 32,
a training batch of 8 (loss, backward, AdamW), and sampling of 2 images with classifier-free guidance 5 and
dynamic thresholding over 50 steps (SuTI: DDIM; imagen-pytorch: its ancestral sampler with 50 timesteps).

SuTI runs three ways: at its defaults (``suti``); with the Trainer's options ``channels_last: true`` and
``optim.implementation: fused`` (``suti_fast``); and with those and ``compile: true`` (``suti_compiled``,
which compiles in every round's fresh process, a minute or two each; ``--sides`` leaves it out).
imagen-pytorch runs as it ships.

Each measurement is a fresh process (one side, one size: warm-up, a timed training block, a timed sampling
call). The sides take turns going first, round after round, and the report gives medians and the median of
the per-round ratios, so a change of load on the machine hits them alike. OpenMP threads wait passively.

imagen-pytorch lives in its own virtual environment, never in this project's. Reusing this environment's
torch (``--system-site-packages``) runs both sides on the same torch build, and this project's package is
then importable there too:

    python -m venv --system-site-packages /tmp/imagen-peer
    /tmp/imagen-peer/bin/pip install imagen-pytorch==2.1.0
    /tmp/imagen-peer/bin/python benchmarks/peer_imagen_pytorch.py            # writes results/peer_imagen_pytorch.json
    /tmp/imagen-peer/bin/python benchmarks/peer_imagen_pytorch.py --quick    # smoke run, measures nothing

With an isolated venv (pip then installs its own torch), name each side's interpreter:
``--imagen-python /tmp/imagen-peer/bin/python --suti-python "$(which python)"``.

imagen-pytorch looks up the T5 encoder's width on the model hub when it is imported (a default argument
of its Unet); offline, the script gives it the width of its default encoder (t5-v1_1-base, 768) first.
Nothing else of T5 is used: both sides read the same random text embeddings.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

# The project's root before this folder: benchmarks/retrieval.py would otherwise shadow the retrieval package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(__file__).parent / "results" / "peer_imagen_pytorch.json"
# suti_fast: the Trainer's channels_last and fused AdamW options; suti_compiled: those and torch.compile
SIDES = ("suti", "suti_fast", "suti_compiled", "imagen")
IMAGE, TEXT_DIM, TOKENS, BATCH, GUIDANCE = 64, 64, 16, 8, 5.0
ATTN = (False, False, True, True)
SIZES = {
    "tiny": {"suti": dict(base_channels=32, channel_mults=(1, 2, 3, 4), num_res_blocks=(1, 1, 2, 2)),  # tiny-base64
             "imagen": dict(dim=32, dim_mults=(1, 2, 3, 4), num_resnet_blocks=(1, 1, 2, 2))},
    "17M": {"suti": dict(base_channels=64, channel_mults=(1, 2, 3, 4), num_res_blocks=(1, 1, 2, 2)),
            "imagen": dict(dim=56, dim_mults=(1, 2, 3, 4), num_resnet_blocks=(1, 1, 2, 2))},
}


def own_peak_mb() -> float | None:
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return None


def inputs(torch, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, IMAGE, IMAGE, generator=g)  # [0, 1]
    text = torch.randn(batch, TOKENS, TEXT_DIM, generator=g)
    mask = torch.ones(batch, TOKENS, dtype=torch.bool)
    return images, text, mask


# ----------------------------------------------------------------------------- one side, one size
def time_both(train_step, sample, train_steps: int, sample_steps: int) -> dict:
    """Warm-up (one training step, a one-step sample), then a timed training block and a timed sampling call.
    The warm-up's own time is reported too: for a compiled model it is mostly compiling."""
    t0 = time.perf_counter()
    train_step()
    sample(1)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(train_steps):
        train_step()
    train_s = (time.perf_counter() - t0) / train_steps
    t0 = time.perf_counter()
    sample(sample_steps)
    return {"train_step_s": train_s, "sample_s_per_image": (time.perf_counter() - t0) / 2, "warmup_s": warmup_s}


def measure_suti(size: str, train_steps: int, sample_steps: int, fast: bool = False, compile: bool = False) -> dict:
    """SuTI's stage at its defaults, or (``fast``) with the Trainer's speed options channels_last weights and
    images and fused AdamW (``channels_last: true``, ``optim.implementation: fused``), and (``compile``) also
    ``compile: true``, the U-Net compiled in place as the Trainer does."""
    import torch

    from suti.cascade import Stage
    from suti.config import DiffusionConfig, StageConfig, UNetConfig
    from suti.sampling import Guidance
    from suti.training.config import OptimSpec
    from suti.training.trainer import StageLoss, build_optimizer

    torch.manual_seed(0)
    unet = UNetConfig(image_size=IMAGE, text_embed_dim=TEXT_DIM, self_attention=ATTN, cross_attention=ATTN,
                      head_dim=32, **SIZES[size]["suti"])
    stage = Stage(StageConfig(name="base", unet=unet, diffusion=DiffusionConfig(), lowres_size=None))
    images, text, mask = inputs(torch, BATCH)
    if fast:
        stage.to(memory_format=torch.channels_last)
    if compile:
        stage.unet.compile()
    opt = build_optimizer(stage, OptimSpec(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01,
                                           implementation="fused" if fast else "auto"))
    loss_fn = StageLoss(stage, channels_last=fast)

    def train_step():
        stage.train()
        loss = loss_fn(images * 2 - 1, text, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample(steps):
        stage.eval()
        stage.sample(text[:2], mask[:2], steps=steps, guidance=Guidance(scale=GUIDANCE, mode="text"),
                     sampler="ddim", threshold="dynamic")

    out = time_both(train_step, sample, train_steps, sample_steps)
    out.update(params=stage.unet.num_parameters(), sampler=f"ddim-{sample_steps}", peak_mb=own_peak_mb(),
               options=("channels_last, fused AdamW" if fast else "defaults") + (", torch.compile" if compile else ""))
    return out


def import_imagen_offline():
    """Import imagen_pytorch without the model hub: its Unet's default ``text_embed_dim`` asks the hub for the
    default T5's config at import time. Seed its config cache with that encoder's width (768) first."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = importlib.util.find_spec("imagen_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("imagen-pytorch is not installed in this interpreter; see this script's docstring")
    from transformers import T5Config

    path = Path(list(spec.submodule_search_locations)[0]) / "t5.py"
    t5_spec = importlib.util.spec_from_file_location("imagen_pytorch.t5", path)
    t5 = importlib.util.module_from_spec(t5_spec)
    sys.modules["imagen_pytorch.t5"] = t5
    t5_spec.loader.exec_module(t5)
    t5.T5_CONFIGS.setdefault(t5.DEFAULT_T5_NAME, {"config": T5Config(d_model=768)})
    import imagen_pytorch

    return imagen_pytorch


def measure_imagen(size: str, train_steps: int, sample_steps: int) -> dict:
    imagen_pytorch = import_imagen_offline()
    import torch
    from importlib.metadata import version

    torch.manual_seed(0)
    unet = imagen_pytorch.Unet(text_embed_dim=TEXT_DIM, layer_attns=ATTN, layer_cross_attns=ATTN, attn_dim_head=32,
                               attn_heads=4, **SIZES[size]["imagen"])
    # timesteps only sets the sampling grid: training draws continuous times either way.
    imagen = imagen_pytorch.Imagen(unets=(unet,), image_sizes=(IMAGE,), text_embed_dim=TEXT_DIM,
                                   timesteps=sample_steps, cond_drop_prob=0.1, dynamic_thresholding=True)
    images, text, mask = inputs(torch, BATCH)
    opt = torch.optim.AdamW(imagen.parameters(), lr=1e-4)

    def train_step():
        imagen.train()
        loss = imagen(images, text_embeds=text, text_masks=mask, unet_number=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample(steps):  # imagen-pytorch fixes its step count at construction (timesteps): warm-up runs them all
        imagen.sample(text_embeds=text[:2], text_masks=mask[:2], cond_scale=GUIDANCE, use_tqdm=False)

    out = time_both(train_step, sample, train_steps, sample_steps)
    out.update(params=sum(p.numel() for p in unet.parameters()), sampler=f"imagen-pytorch ancestral, {sample_steps} "
               "timesteps", peak_mb=own_peak_mb(), imagen_pytorch=version("imagen-pytorch"))
    return out


# ----------------------------------------------------------------------------- the run
def can_import(python: str, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES),
                    help="suti_compiled compiles in every round's fresh process (a minute or two each)")
    ap.add_argument("--train-steps", type=int, default=10, help="training steps per timed block")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--suti-python", default=sys.executable, help="interpreter that imports this project's suti")
    ap.add_argument("--imagen-python", default=sys.executable, help="interpreter that imports imagen_pytorch")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1 training step, 2 sampling steps; "
                                                         "writes peer_imagen_pytorch_quick.json unless --out is given")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", choices=list(SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--size", choices=list(SIZES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.train_steps, args.sample_steps = 1, 1, 2

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        if args.child == "imagen":
            out = measure_imagen(args.size, args.train_steps, args.sample_steps)
        else:
            out = measure_suti(args.size, args.train_steps, args.sample_steps, fast=args.child != "suti",
                               compile=args.child == "suti_compiled")
        print(json.dumps(out))
        return

    for side, python, module in (("suti", args.suti_python, "suti"), ("imagen", args.imagen_python, "imagen_pytorch")):
        if not can_import(python, module):
            raise SystemExit(f"{python} cannot import {module} (the {side} side); see this script's docstring")
    from tqdm.auto import tqdm  # noqa: F401  (present with either side's environment)

    out = Path(args.out or (OUT.with_name("peer_imagen_pytorch_quick.json") if args.quick else OUT))
    common = ["--train-steps", str(args.train_steps), "--sample-steps", str(args.sample_steps),
              "--threads", str(args.threads)]
    chosen = [s for s in SIDES if s in args.sides]
    if "imagen" not in chosen:
        raise SystemExit("--sides must include imagen: every ratio is against it")
    ours = [s for s in chosen if s != "imagen"]
    runs = {size: {side: [] for side in chosen} for size in args.sizes}
    plan = [(r, size) for r in range(args.rounds) for size in args.sizes]
    for r, size in tqdm(plan, desc="rounds x sizes"):
        order = chosen[r % len(chosen):] + chosen[:r % len(chosen)]  # rotate who goes first
        for side in order:
            python = args.suti_python if side != "imagen" else args.imagen_python
            proc = subprocess.run([python, __file__, "--child", side, "--size", size, *common],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{side} / {size} failed:\n{proc.stderr[-3000:]}")
            runs[size][side].append(json.loads(proc.stdout.strip().splitlines()[-1]))

    result = {
        "what": "SuTI Efficient U-Net vs imagen-pytorch Unet: training step and guided sampling time at two sizes",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "python": platform.python_version(),
                    "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "setup": {"image_size": IMAGE, "text_embed_dim": TEXT_DIM, "tokens": TOKENS, "train_batch": BATCH,
                  "train_steps_per_block": args.train_steps, "sample_steps": args.sample_steps,
                  "sample_images_per_call": 2, "guidance": GUIDANCE, "rounds": args.rounds, "quick": args.quick,
                  "configs": {s: SIZES[s] for s in args.sizes}},
        "sizes": {},
        "notes": {"sides": "suti: defaults, plain AdamW; suti_fast: the Trainer's channels_last and fused AdamW; "
                           "suti_compiled: those and torch.compile (compile time in warmup_s); imagen-pytorch as "
                           "it ships, plain AdamW",
                  "training_speed_ratio": "per SuTI side: imagen-pytorch step time / SuTI step time, median of "
                                          "per-round ratios (>1: SuTI trains faster)",
                  "sampling_time_ratio": "per SuTI side: SuTI sampling time / imagen-pytorch sampling time, median "
                                         "of per-round ratios (<1: SuTI samples faster)",
                  "warmup_s": "one training step and a one-step sample before the timed work (compiling, for "
                              "suti_compiled)"},
    }
    for size, sides in runs.items():
        med = lambda side, k: statistics.median(r[k] for r in sides[side])  # noqa: E731
        per_side = lambda k: {("imagen_pytorch" if side == "imagen" else side): med(side, k)  # noqa: E731
                              for side in chosen}
        # Ratios within each round (the sides ran back to back), then the median over rounds.
        ratio = lambda side, k, inv=False: statistics.median(  # noqa: E731
            (i[k] / s[k]) if not inv else (s[k] / i[k]) for s, i in zip(sides[side], sides["imagen"]))
        result["sizes"][size] = {
            "params": {"suti": sides[ours[0]][0]["params"], "imagen_pytorch": sides["imagen"][0]["params"]},
            "train_step_s": per_side("train_step_s"),
            "sample_s_per_image": per_side("sample_s_per_image"),
            "peak_mb": per_side("peak_mb"),
            "warmup_s": per_side("warmup_s"),
            "training_speed_ratio": {side: ratio(side, "train_step_s") for side in ours},
            "sampling_time_ratio": {side: ratio(side, "sample_s_per_image", inv=True) for side in ours},
            "imagen_pytorch_version": sides["imagen"][0].get("imagen_pytorch"),
            "rounds": sides,
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # atomic: the peer venv may not have this project installed
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(json.dumps({s: {k: v for k, v in r.items() if k != "rounds"} for s, r in result["sizes"].items()}, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
