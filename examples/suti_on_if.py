"""SuTI on DeepFloyd IF: from IF weights and the dataset builder's in-context shards to a trained SuTI-IF
model, then subject-driven generation from your own photos.

    # offline demo: a tiny random IF-shaped U-Net and a tiny T5 stand in for IF-I and T5-XXL
    python examples/suti_on_if.py --out runs/suti-if

    # the real thing (one GPU, bf16; accept IF's licence on the hub first: non-commercial research only)
    python examples/suti_on_if.py --base DeepFloyd/IF-I-XL-v1.0 --text-encoder <T5-XXL folder> --max-length 77 \
        --shards "icl/{00000..00099}.tar" --steps 20000 --batch-size 8 --mixed-precision bf16 \
        --subject me1.jpg me2.jpg me3.jpg --subject-text "a photo of my dog" \
        --prompt "the dog on a surfboard" --out runs/suti-if

Steps: (1) the text encoder's empty-prompt embedding (IF's negative prompt); (2) a SuTI-IF stage on the
base U-Net (zero-initialised context layers: outputs equal IF's); (3) in-context training of the new
layers alone with the project's trainer (``suti train`` does the same from a YAML config); (4) the
cascade folder (cascade.json + the stage folder: new layers only, never IF's weights) loaded by
SuTIPipeline, which refuses a base whose weights fingerprint differs; (5) generation with the photos.
Without --shards the dataset builder makes in-context shards from its planted web corpus first.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def tiny_if_base(folder: Path, text_dim: int) -> Path:
    """A local IF-style model folder (unet/ + scheduler/) with a random IF-shaped U-Net, for the demo."""
    from diffusers import DDPMScheduler

    from suti.if_backbone.shapes import build_unet, tiny_stage_one_config

    build_unet(tiny_stage_one_config(text_dim=text_dim, sample_size=16), seed=0).save_pretrained(folder / "unet")
    DDPMScheduler(variance_type="learned_range", beta_schedule="squaredcos_cap_v2", thresholding=True,
                  dynamic_thresholding_ratio=0.95, sample_max_value=1.5).save_pretrained(folder / "scheduler")
    return folder


def planted_icl_shards(out: Path) -> tuple[list[str], list]:
    """In-context shards from the dataset builder's planted web corpus; returns them and held-out photos."""
    from dataset_builder import build_dataset, config_from_dict
    from dataset_builder.testing import SUBJECT_WORDS, make_planted_records, subject_image, write_img2dataset_shards

    rows, _ = make_planted_records(n_subjects=6)
    web = write_img2dataset_shards(rows, out / "web", n_shards=2)
    build_dataset(config_from_dict({
        "inputs": [{"type": "webdataset", "paths": [str(p) for p in web]}], "output_dir": str(out / "icl"), "k": 3,
        "embedder": {"factory": "dataset_builder.testing:planted_embedder"},
        "expert": {"type": "held_out", "min_clip_t": 0.0, "min_clip_i": 0.5}, "prompts": {"per_cluster": 4}}))
    held_out = [subject_image(SUBJECT_WORDS[6], v) for v in range(3)]
    return sorted(str(p) for p in (out / "icl").glob("icl-*.tar")), held_out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/suti-if")
    ap.add_argument("--base", default=None, help="IF hub id or local folder (default: a tiny random IF-shaped model)")
    ap.add_argument("--text-encoder", default=None, help="T5 folder or hub name (default: a tiny T5)")
    ap.add_argument("--max-length", type=int, default=16, help="text tokens (IF: 77)")
    ap.add_argument("--shards", nargs="*", default=None, help="the dataset builder's in-context shards")
    ap.add_argument("--text-cache", default=None, help="precomputed text embeddings (suti text-cache)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--train-unet", action="store_true", help="train the whole U-Net, not the new layers alone")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--subject", nargs="*", default=None, help="your photos of the subject (1-5)")
    ap.add_argument("--subject-text", default="a photo of the subject")
    ap.add_argument("--prompt", default="the subject on the beach")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from suti.checkpoint import save_cascade
    from suti.cascade import Cascade
    from suti.config import CascadeConfig
    from suti.if_backbone.files import from_if
    from suti.pipeline import SuTIPipeline
    from suti.text import TextEncoder
    from suti.tiny import build_tiny_t5
    from suti.training import TrainConfig, Trainer

    print("1/5 text encoder and the empty-prompt embedding")
    encoder_ref = args.text_encoder or str(build_tiny_t5(out / "text_encoder"))
    text = TextEncoder.from_pretrained(encoder_ref, max_length=args.max_length)
    null_text, _ = text.encode([""])

    print("2/5 SuTI-IF stage on the base U-Net (new layers zero-initialised)")
    base = args.base or str(tiny_if_base(out / "IF-tiny", text.dim))
    stage = from_if(base, null_text_emb=null_text, train_unet=args.train_unet,
                    gradient_checkpointing=args.gradient_checkpointing)
    print(f"   U-Net {sum(p.numel() for p in stage.unet.unet.parameters()):,} parameters, new layers "
          f"{stage.unet.num_context_parameters():,} at {list(stage.config.context_placement)}")
    ckpt = out / "ckpt"
    save_cascade(Cascade([stage]), CascadeConfig(text_encoder=encoder_ref, text_max_length=args.max_length,
                                                 stages=("base",)), ckpt)

    print("3/5 in-context training")
    held_out = None
    shards = args.shards
    if not shards:
        shards, held_out = planted_icl_shards(out)
    text_spec = {"encoder": encoder_ref, "max_length": args.max_length}
    if args.text_cache:
        text_spec["cache"] = args.text_cache
    run = Trainer(TrainConfig.from_dict({
        "output_dir": str(out / "train"), "init_from": str(ckpt / "base"), "text": text_spec,
        "data": {"sources": shards, "task": "in_context", "max_exemplars": 3}, "batch_size": args.batch_size,
        "steps": args.steps, "optim": {"lr": args.lr, "warmup_steps": min(100, args.steps // 5)},
        "mixed_precision": args.mixed_precision, "ema": {"enabled": False}, "checkpoint_every": max(50, args.steps // 4),
        "log_every": max(10, args.steps // 10), "sample": {"every": 0, "num_held": 2, "steps": 10}})).train()
    from suti.pipeline import save_stage_into
    from suti.checkpoint import load_stage

    save_stage_into(ckpt, load_stage(run["export_dir"]))

    print("4/5 the cascade folder, loaded onto the base weights (fingerprint checked)")
    pipe = SuTIPipeline.from_pretrained(ckpt)

    print("5/5 generation from the subject photos")
    photos = args.subject or held_out
    images = pipe(args.prompt, subject_images=photos, subject_texts=args.subject_text, num_images=4, steps=25,
                  sampler="ddpm", guidance=3.0, guidance_mode="interleaved", seed=0)
    from suti.images import make_grid

    make_grid(images, cols=4).save(out / "generate.png")
    summary = {"checkpoint": str(ckpt), "train_run": str(out / "train"), "grid": str(out / "generate.png"),
               "files": sorted(p.name for p in (ckpt / "base").iterdir())}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
