"""SuTI cost against plain text-to-image and the per-subject baselines, in one run on one U-Net.

Measures, with 50 DDIM steps, guidance on and K=3 exemplars:
- sampling time of SuTI with the exemplar cache / plain text-to-image (``cached_ratio``, goal <= 1.10);
- the same without the cache (``uncached_ratio``: exemplars re-encoded and re-projected at every step; the
  guidance branches of a step share one batched model call);
- time to the first personalised image: SuTI (encode + sample) vs DreamBooth (fine-tuning + class-prior
  images + sample) vs Textual Inversion (embedding optimisation + sample), on the same base, each baseline
  with its library defaults (DreamBoothConfig, TextualInversionConfig; recorded in the JSON) unless
  ``--dreambooth-steps`` / ``--ti-steps`` are given. The three run interleaved, ``--baseline-repeats``
  rounds, and the medians are reported;
- bytes stored per subject for each method.

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set; recorded in the JSON): spinning
waits made a loaded machine about 10x slower.

    python benchmarks/context.py [--preset tiny-base64] [--out benchmarks/results/context.json]
    python benchmarks/context.py --quick        # smoke run (a minute): checks the script, measures nothing
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retrieval.atomic import atomic_write_json  # noqa: E402
from suti.images import open_image, to_rgb  # noqa: E402

OUT = Path(__file__).parent / "results" / "context.json"
DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "dreambench"


def folder_bytes(path: Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def subject_images(n: int = 3):
    dog = DREAMBENCH / "dog"
    if dog.is_dir():
        return sorted(dog.glob("*.jpg"))[:n]
    return [Image.new("RGB", (256, 256), (30 * i, 120, 200)) for i in range(n)]  # no shared/ checkout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny-base64")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--guidance-mode", default="interleaved", choices=["text", "context", "joint", "interleaved"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--baseline-repeats", type=int, default=3,
                    help="interleaved rounds of time-to-first-image for SuTI, DreamBooth and Textual Inversion")
    ap.add_argument("--dreambooth-steps", type=int, default=None, help="default: DreamBoothConfig's")
    ap.add_argument("--ti-steps", type=int, default=None, help="default: TextualInversionConfig's")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny-base32, 3 sampling steps, 1 round, 2 fine-tuning steps, 2 prior images; "
                         "writes context_quick.json unless --out is given")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.steps, args.repeats, args.baseline_repeats = "tiny-base32", 3, 1, 1
        args.dreambooth_steps, args.ti_steps = args.dreambooth_steps or 2, args.ti_steps or 2
    args.out = args.out or str(OUT.with_name("context_quick.json") if args.quick else OUT)
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    from suti.personalize import DreamBoothConfig, TextualInversionConfig, dreambooth, textual_inversion
    from suti.pipeline import SuTIPipeline, new_pipeline
    from suti.presets import preset
    from suti.text import TextEncoder
    from suti.tiny import build_tiny_t5

    torch.manual_seed(0)
    enc = TextEncoder.from_pretrained(build_tiny_t5(), max_length=32)
    t2i = new_pipeline(enc, [preset(args.preset, text_embed_dim=enc.dim, stage_name="base")]).to(args.device)
    for p in t2i.cascade.parameters():  # weights of a "trained" scale, so no path is short-circuited
        if p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.02)
    suti, growth = SuTIPipeline.from_text_to_image(t2i)
    for n, p in suti.cascade.named_parameters():
        if "context_attn.out" in n:
            torch.nn.init.normal_(p, std=0.02)
    images = subject_images(args.k)
    prompt, subject_text = "a dog on the beach", "a photo of a dog"
    common = dict(num_images=1, steps=args.steps, guidance=args.guidance, seed=0)
    subject_kw = dict(subject_texts=subject_text, guidance_mode=args.guidance_mode)

    # Sampling-time ratios: exemplars decoded once up front (decoding is I/O, not sampling), one warm-up
    # call each, then the three variants interleaved so machine noise hits them alike.
    pil = [to_rgb(open_image(p)) for p in images]
    variants = {
        "t2i": lambda: t2i(prompt, **common),
        "cached": lambda: suti(prompt, subject_images=pil, **subject_kw, **common),
        "uncached": lambda: suti(prompt, subject_images=pil, cache_context=False, **subject_kw, **common),
    }
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    t2i_s, cached_s, uncached_s = (statistics.median(times[k]) for k in ("t2i", "cached", "uncached"))
    # Ratios within each round (the variants ran back to back), then the median over rounds: load on
    # this shared machine drifts between rounds far more than within one.
    paired = lambda k: statistics.median(a / b for a, b in zip(times[k], times["t2i"]))  # noqa: E731
    # Time to the first personalised image, each method from the photo files with its library defaults. The
    # three run interleaved, round after round, so a change of load on the machine hits them alike.
    db_kw = {} if args.dreambooth_steps is None else {"steps": args.dreambooth_steps}
    ti_kw = {} if args.ti_steps is None else {"steps": args.ti_steps}
    if args.quick:
        db_kw["num_prior_images"] = 2
    db_cfg, ti_cfg = DreamBoothConfig(**db_kw), TextualInversionConfig(**ti_kw)
    first = {"suti": [], "dreambooth": [], "textual_inversion": []}
    db_bytes = ti_bytes = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for _ in range(args.baseline_repeats):
            t0 = time.perf_counter()
            suti(prompt, subject_images=images, **subject_kw, **common)
            sync()
            first["suti"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            db = dreambooth(t2i, images, "dog", db_cfg)
            db.pipe(db.prompt("{subject} on the beach"), **common)
            sync()
            first["dreambooth"].append(time.perf_counter() - t0)
            db_bytes = folder_bytes(db.save_pretrained(tmp / "dreambooth"))
            del db

            t0 = time.perf_counter()
            ti = textual_inversion(t2i, images, "dog", ti_cfg)
            t2i(f"a photo of {ti.token} on the beach", **common)
            sync()
            first["textual_inversion"].append(time.perf_counter() - t0)
            ti_bytes = folder_bytes(ti.save(tmp / "ti.safetensors"))
            t2i.token_embeddings.pop(ti.token, None)  # the next round learns the token afresh
    first_s, db_s, ti_s = (statistics.median(first[k]) for k in ("suti", "dreambooth", "textual_inversion"))

    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"},
        "setup": {"preset": args.preset, "ddim_steps": args.steps, "k": args.k, "guidance": args.guidance,
                  "guidance_mode": args.guidance_mode, "repeats": args.repeats,
                  "baseline_repeats": args.baseline_repeats, "quick": args.quick,
                  "timing": "median seconds per call; ratios are the median of per-round ratios; the three "
                            "methods' time to first image ran interleaved, one round after another"},
        "param_growth": growth,
        "text_to_image_s": t2i_s,
        "suti_cached_s": cached_s,
        "suti_uncached_s": uncached_s,
        "cached_ratio": paired("cached"),
        "uncached_ratio": paired("uncached"),
        "cached_ratio_of_medians": cached_s / t2i_s,
        "cached_ratio_of_minima": min(times["cached"]) / min(times["t2i"]),
        "cached_ratio_goal": 1.10,
        "methods": {
            "suti": {"seconds_to_first_image": first_s, "bytes_per_subject": 0,
                     "exemplar_bytes": sum(folder_bytes(p) for p in images if isinstance(p, Path)),
                     "note": "no per-subject training or stored weights; the user's own exemplar photos "
                             "(exemplar_bytes, which every method needs as input) are read at sampling time"},
            "dreambooth": {"seconds_to_first_image": db_s, "bytes_per_subject": db_bytes,
                           "fine_tune_steps": db_cfg.steps, "config": dataclasses.asdict(db_cfg),
                           "note": "includes class-prior image generation and the first sample"},
            "textual_inversion": {"seconds_to_first_image": ti_s, "bytes_per_subject": ti_bytes,
                                  "fine_tune_steps": ti_cfg.steps, "config": dataclasses.asdict(ti_cfg)},
        },
    }
    result["methods"]["dreambooth"]["ratio_to_suti"] = db_s / first_s
    result["methods"]["textual_inversion"]["ratio_to_suti"] = ti_s / first_s
    result["all_times_s"] = times
    result["all_first_image_s"] = first
    result["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
