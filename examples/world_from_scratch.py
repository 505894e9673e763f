"""The whole path on the world, from a web crawl to judged samples of subjects no page showed:
crawl -> text-to-image + super-resolution pretraining -> dataset builder (world renderer as the bulk expert,
DreamBooth on a few clusters) -> SuTI -> evaluation. Resumable: rerun with the same --out to continue.

    python examples/world_from_scratch.py --out runs/from_scratch                 # the CPU defaults
    python examples/world_from_scratch.py --out runs/fs_quick --quick             # every step, tiny budgets
"""
import argparse

from suti.demo.from_scratch import FromScratchConfig, print_summary, run_from_scratch

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/from_scratch")
ap.add_argument("--quick", action="store_true", help="tiny budgets: checks the path in about a minute")
args = ap.parse_args()

cfg = FromScratchConfig(out=args.out)
if args.quick:
    cfg = FromScratchConfig(out=args.out, shop_pages=16, batch_size=4, t2i_steps=20, sr_steps=10, suti_steps=20,
                            dreambooth_clusters=1, dreambooth_steps=5, eval_subjects=2, eval_prompts=2,
                            eval_samples=1, sample_steps=5)
summary = run_from_scratch(cfg)
print_summary(summary)
print("open", f"{args.out}/index.html", "(samples and metrics) and", f"{args.out}/icl/contact_sheet.html",
      "(what the builder kept)")
