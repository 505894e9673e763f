"""Steps to quality on the product: the shipped world SuTI model drawing held-out subjects from their photos,
judged by the world's identity and attribute judges.

For every sampler (DDIM, DPM-Solver++(2M), UniPC) and step count, the same held-out subjects, prompts, exemplars
and seeds are sampled with the pipeline's guidance (interleaved, scale --guidance) and dynamic thresholding.
The reference is 250-step DDPM (ancestral) sampling of the same requests. Per setting:

- identity top-1 among the 30 held-out subjects, identity cosine to the subject's photos, text fidelity
  (attribute accuracy on what the prompt asks): the world's DINO and CLIP-T;
- ``rms_to_ode``: RMS pixel distance, per seed, to a 250-step DDIM solution of the same ODE from the same
  noise (the deterministic samplers' integration error).

A setting "matches" the reference when its identity top-1 and text fidelity are within --tolerance of DDPM-250's
and its identity cosine within tolerance / 2. The table gives, per sampler, the fewest steps that match, and
DDIM-50's own standing. Writes benchmarks/results/samplers_world.json.

    python benchmarks/samplers_world.py [--subjects 6] [--prompts 5] [--samples 2]
    python benchmarks/samplers_world.py --quick        # smoke run, measures nothing
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp; see benchmarks/README.md

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages, before this folder's retrieval.py
from retrieval.atomic import atomic_write_json  # noqa: E402

OUT = Path(__file__).parent / "results" / "samplers_world.json"
STEPS = (5, 10, 15, 20, 25, 50)
SAMPLERS = ("ddim", "dpmpp_2m", "unipc")


def sample_all(pipe, subjects, prompt_ids, samples, sampler, steps, guidance):
    from suti.demo.heldout import heldout_subject
    from suti.demo.world_suti import NUM_EXEMPLARS

    records, t0 = [], time.perf_counter()
    for i in subjects:
        h = heldout_subject(i)
        exemplars = h.exemplar_images(32)[:NUM_EXEMPLARS]
        texts = [h.prompts[j].prompt for j in prompt_ids]
        images = pipe(texts, subject_images=exemplars, subject_texts=h.exemplar_texts[:NUM_EXEMPLARS],
                      num_images=samples, steps=steps, sampler=sampler, guidance=guidance, seed=1000 + i)
        for n, j in enumerate(prompt_ids):
            records.append({"subject": i, "prompt_id": j, "labels": h.prompts[j].labels, "exemplars": exemplars,
                            "ground_truth": [h.target_images(32)[j]], "out": images[n * samples:(n + 1) * samples]})
    return records, time.perf_counter() - t0


def pixels(records) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for r in records for im in r["out"]])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="pipeline folder (default: the shipped world model)")
    ap.add_argument("--subjects", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--reference-steps", type=int, default=250)
    ap.add_argument("--tolerance", type=float, default=0.03)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.subjects, args.prompts, args.samples, args.steps, args.reference_steps = 1, 2, 1, [5], 10

    from suti.demo.showcase import SHIPPED_WORLD_SUTI, pick_prompts, score
    from suti.pipeline import SuTIPipeline

    pipe = SuTIPipeline.from_pretrained(args.model or SHIPPED_WORLD_SUTI, dtype=torch.float32)
    subjects, prompt_ids = list(range(args.subjects)), pick_prompts(args.prompts)

    def judged(sampler, steps):
        records, seconds = sample_all(pipe, subjects, prompt_ids, args.samples, sampler, steps, args.guidance)
        m = score(records, rows=("out",))["out"]
        keep = ("identity_top1", "identity_cosine", "text_fidelity", "diversity_pixels")
        return {**{k: m[k] for k in keep}, "seconds": seconds}, pixels(records)

    print(f"reference: DDPM-{args.reference_steps} and DDIM-{args.reference_steps} (ODE)", flush=True)
    reference, _ = judged("ddpm", args.reference_steps)
    _, ode = judged("ddim", args.reference_steps)
    table = {}
    for sampler in args.samplers:
        table[sampler] = {}
        for steps in args.steps:
            m, px = judged(sampler, steps)
            m["rms_to_ode"] = float(np.sqrt(((px - ode) ** 2).mean(axis=(1, 2, 3))).mean())
            m["matches_reference"] = bool(
                abs(m["identity_top1"] - reference["identity_top1"]) <= args.tolerance
                and abs(m["text_fidelity"] - reference["text_fidelity"]) <= args.tolerance
                and abs(m["identity_cosine"] - reference["identity_cosine"]) <= args.tolerance / 2)
            table[sampler][str(steps)] = m
            print(f"  {sampler:9s} {steps:3d} steps: id top-1 {m['identity_top1']:.3f} cos {m['identity_cosine']:.3f} "
                  f"text {m['text_fidelity']:.3f} rms to ODE {m['rms_to_ode']:.4f} "
                  f"{'matches' if m['matches_reference'] else ''}", flush=True)
    fewest = {s: next((int(n) for n, m in sorted(table[s].items(), key=lambda kv: int(kv[0]))
                       if m["matches_reference"]), None) for s in table}
    doc = {
        "what": "steps each sampler needs to match DDPM-250 on the world's judges, the shipped SuTI model on "
                "held-out subjects (see the module docstring)",
        "command": "python benchmarks/samplers_world.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model or "suti/demo/assets/world_suti (shipped)",
        "setup": {"subjects": args.subjects, "prompts_per_subject": len(prompt_ids), "samples": args.samples,
                  "guidance": args.guidance, "guidance_mode": "interleaved (pipeline default with exemplars)",
                  "threshold": "dynamic", "tolerance": args.tolerance},
        "reference": {"sampler": f"ddpm-{args.reference_steps}", **reference},
        "fewest_steps_matching_reference": fewest,
        "table": table,
        "machine": {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
    }
    print("fewest steps matching DDPM-250:", fewest)
    if not args.quick:
        atomic_write_json(Path(args.out), doc)
        print("wrote", args.out)


if __name__ == "__main__":
    main()
