"""SuTI on DeepFloyd IF: parameter growth at real size, and speed / memory of sampling and training.

Sizes (always, no memory used): IF-I-XL-shaped and IF-II-shaped ``UNet2DConditionModel``s are built on the
meta device; reports the U-Net's parameters, the new context layers' parameters at the default placement
(lowest down block, mid block, first up block) and the growth.

Speed / memory (``--timing``): on CUDA, the real-size shapes with random weights in bf16 (one sampling step
with 2 guidance branches and K=3 exemplars, the exemplar encoding, one context-only training step with
gradient checkpointing); on the CPU, a small IF-shaped U-Net in float32. Peak GPU memory is
``torch.cuda.max_memory_allocated``. Random weights: the figures are cost, not quality.

    python benchmarks/if_backbone.py                       # sizes only -> benchmarks/results/if_cpu.json
    python benchmarks/if_backbone.py --timing              # + CPU (small model) or CUDA (real size) timings
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retrieval.atomic import atomic_write_json  # noqa: E402
from suti.context import Exemplars  # noqa: E402
from suti.if_backbone.context import IFContextUNet  # noqa: E402
from suti.if_backbone.shapes import (build_unet, if_stage_one_config, if_stage_two_config,  # noqa: E402
                                     tiny_stage_one_config)
from suti.if_backbone.stage import new_if_stage  # noqa: E402
from suti.sampling import Guidance  # noqa: E402

T5_XXL_DIM, T5_LEN = 4096, 77


def sizes() -> dict:
    out = {}
    for name, cfg in (("IF-I-XL-shaped", if_stage_one_config()), ("IF-II-shaped", if_stage_two_config())):
        unet = build_unet(cfg, meta=True)
        with torch.device("meta"):
            model = IFContextUNet(unet)
        base = sum(p.numel() for p in unet.parameters())
        added = model.num_context_parameters()
        out[name] = {"block_out_channels": list(cfg["block_out_channels"]), "unet_params": base,
                     "context_params": added, "growth": round(added / base, 4),
                     "placement": list(model.placement),
                     "unet_bytes_bf16": base * 2, "context_bytes_fp32": added * 4}
    return out


def _timeit(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timings(device: str, repeats: int) -> dict:
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = if_stage_one_config() if cuda else tiny_stage_one_config(text_dim=64, sample_size=32)
    text_dim = cfg["encoder_hid_dim"]
    text_len = T5_LEN if cuda else 16
    torch.manual_seed(0)
    unet = build_unet(cfg)
    stage = new_if_stage(unet, null_text_emb=torch.zeros(1, text_len, text_dim),
                         context_head_dim=64 if cuda else 16).to(device, dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    size, k, b = cfg["sample_size"], 3, 1
    g = torch.Generator(device).manual_seed(0)
    text = torch.randn(b, text_len, text_dim, device=device, dtype=dtype, generator=g)
    mask = torch.ones(b, text_len, dtype=torch.bool, device=device)
    ex = Exemplars(torch.rand(b, k, 3, size, size, device=device, dtype=dtype, generator=g) * 2 - 1,
                   torch.randn(b, k, text_len, text_dim, device=device, dtype=dtype, generator=g),
                   torch.ones(b, k, text_len, dtype=torch.bool, device=device),
                   torch.ones(b, k, dtype=torch.bool, device=device))
    res = {"device": device, "dtype": str(dtype).replace("torch.", ""), "image_size": size, "exemplars": k,
           "unet_params": sum(p.numel() for p in unet.parameters()),
           "context_params": stage.unet.num_context_parameters()}
    peak = {}

    def measured(name, fn):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        res[f"{name}_s"] = round(_timeit(fn, repeats, sync), 4)
        if cuda:
            peak[name] = torch.cuda.max_memory_allocated()

    with torch.no_grad():
        measured("sample_step_t2i", lambda: stage.sample(text, mask, guidance=Guidance(5.0, "text"), steps=1,
                                                         generator=g))
        measured("sample_step_suti", lambda: stage.sample(text, mask, exemplars=ex, guidance=Guidance(5.0, "interleaved"),
                                                          steps=1, generator=g))
        measured("encode_exemplars", lambda: stage.unet.project_context(stage._encode_exemplars(ex)))
    stage.train_context_only().train()
    unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW([p for p in stage.parameters() if p.requires_grad], lr=1e-5)
    x0 = torch.rand(b, 3, size, size, device=device, dtype=dtype, generator=g) * 2 - 1

    def train_step():
        opt.zero_grad(set_to_none=True)
        stage.training_loss(x0, text, mask, exemplars=ex, generator=g).backward()
        opt.step()

    measured("train_step_context_only", train_step)
    if cuda:
        res["peak_gpu_bytes"] = peak
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"sizes": sizes(), "torch": torch.__version__, "machine": platform.machine(),
              "cpu_count": os.cpu_count(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    import diffusers

    result["diffusers"] = diffusers.__version__
    if args.timing:
        result["timings"] = timings(device, args.repeats)
    out = Path(args.out or Path(__file__).parent / "results" / f"if_{'cuda' if device == 'cuda' else 'cpu'}.json")
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
