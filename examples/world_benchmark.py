"""Write the 30-subject held-out benchmark as folders of PNGs + prompts.json, and show one subject's
exemplars, prompts and ground truth through the Python API.

    python examples/world_benchmark.py --out runs/world_benchmark --size 256
"""
import argparse

from suti.demo.heldout import heldout_subject, write_benchmark

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--size", type=int, default=256)
args = ap.parse_args()

hs = heldout_subject(0)
print("subject 0:", hs.subject.id, "| exemplar texts:", hs.exemplar_texts)
for p in hs.prompts[:6]:
    print(f"  [{p.skill}] {p.prompt!r} -> labels {p.labels}")
print(f"  ... {len(hs.prompts)} prompts")
print("written:", write_benchmark(args.out, size=args.size))
