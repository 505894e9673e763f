"""The main job, end to end on one machine with tiny models (no downloads):

  web pages (img2dataset shards) -> dataset_builder -> in-context shards + stats + contact sheet
  -> text-to-image pretraining of a base stage -> SuTI conversion -> in-context training
  -> subject-driven generation of a held-out subject from its photos, as a PNG grid, scored.

    python examples/end_to_end.py --out runs/e2e [--t2i-steps 300] [--icl-steps 600]

The corpus is the dataset builder's planted web corpus: shop pages each showing one subject from several
views (plus ads, logos, junk news pages, tiny blog posts, corrupt files and URL spellings that must be
normalised), so every builder stage has real work to do. CLIP is the builder's deterministic stand-in
(no pretrained CLIP can be downloaded here); swap `embedder` for an open_clip model on real data.

The last subject of the planted set is held out: it is on no page the builder or the trainer sees. Its
photos are the exemplars at the end, and summary.json scores how much the SuTI samples look like it
(cosine of the stand-in CLIP image embeddings) against text-to-image samples of the same prompt.
Everything lands under --out: web/ (input shards), icl/ (training shards, stats.json, contact_sheet.html),
t2i/ and suti/ (pipelines), train_*/ (runs with sample grids), generate.png, summary.json.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from PIL import Image

SMALL_STAGE = {  # 16 px base stage: small enough to train on a CPU in minutes
    "name": "base", "lowres_size": None,
    "unet": {"image_size": 16, "base_channels": 32, "channel_mults": [1, 2], "num_res_blocks": [1, 1],
             "self_attention": [False, True], "cross_attention": [False, True], "head_dim": 32,
             "text_embed_dim": 64},
}


def build_corpus(out: Path, n_subjects: int):
    from dataset_builder.testing import make_planted_records, write_img2dataset_shards

    rows, expected = make_planted_records(n_subjects=n_subjects)
    shards = write_img2dataset_shards(rows, out / "web", n_shards=3)
    return [str(p) for p in shards], rows, expected


def build_icl(out: Path, shards: list[str]) -> dict:
    from dataset_builder import build_dataset, config_from_dict

    cfg = config_from_dict({
        "inputs": [{"type": "webdataset", "paths": shards}],
        "output_dir": str(out / "icl"),
        "k": 3,
        "embedder": {"factory": "dataset_builder.testing:planted_embedder"},
        "expert": {"type": "held_out", "min_clip_t": 0.0, "min_clip_i": 0.5},
        "prompts": {"per_cluster": 6},
    })
    return build_dataset(cfg)


def train(cfg_dict: dict) -> dict:
    from suti.training import TrainConfig, Trainer

    return Trainer(TrainConfig.from_dict(cfg_dict)).train()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/e2e")
    ap.add_argument("--subjects", type=int, default=11, help="training subjects (one more is held out; at most 11)")
    ap.add_argument("--t2i-steps", type=int, default=300)
    ap.add_argument("--icl-steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from suti.cascade import Cascade
    from suti.checkpoint import load_stage
    from suti.images import make_grid
    from suti.pipeline import SuTIPipeline
    from suti.text import TextEncoder
    from suti.tiny import build_tiny_t5

    print("1/5 web corpus -> img2dataset shards")
    if not 1 <= args.subjects <= 11:
        raise SystemExit(f"--subjects must be 1..11 (the planted set has 12, one held out), got {args.subjects}")
    shards, rows, expected = build_corpus(out, args.subjects)
    t5 = build_tiny_t5(out / "text_encoder", corpus=[r["text"] for r in rows if r["text"]])

    print("2/5 dataset builder -> in-context shards")
    stats = build_icl(out, shards)

    common = {"text": {"encoder": str(t5), "max_length": 16}, "batch_size": args.batch_size,
              "ema": {"decay": 0.995}, "checkpoint_every": 200, "log_every": 50,
              "sample": {"every": 0, "num_held": 4, "steps": 20, "guidance": 3.0}}
    print("3/5 text-to-image pretraining of the base stage")
    t2i_run = train({**common, "output_dir": str(out / "train_t2i"), "stage": {"config": SMALL_STAGE},
                     "data": {"sources": shards, "task": "text_to_image"}, "steps": args.t2i_steps,
                     "optim": {"lr": 2e-3, "warmup_steps": 50}})

    print("4/5 SuTI conversion + in-context training")
    icl_shards = sorted(str(p) for p in (out / "icl").glob("icl-*.tar"))
    icl_run = train({**common, "output_dir": str(out / "train_icl"), "init_from": t2i_run["export_dir"],
                     "stage": {"config": SMALL_STAGE}, "data": {"sources": icl_shards, "task": "in_context",
                                                                "max_exemplars": 3},
                     "steps": args.icl_steps, "optim": {"lr": 1e-3, "warmup_steps": 50}})

    enc = TextEncoder.from_pretrained(t5, max_length=16)
    t2i = SuTIPipeline(Cascade([load_stage(t2i_run["export_dir"])]), enc)
    t2i.save_pretrained(out / "t2i")
    suti = SuTIPipeline(Cascade([load_stage(icl_run["export_dir"])]), enc)
    suti.save_pretrained(out / "suti")

    print("5/5 subject-driven generation of the held-out subject")
    from dataset_builder.testing import CLASS_NOUNS, SUBJECT_WORDS, planted_embedder, subject_image

    word, noun = SUBJECT_WORDS[args.subjects], CLASS_NOUNS[args.subjects]
    k = 3
    exemplars = [subject_image(word, v) for v in range(k)]
    texts = [f"{word} {noun} on a table", f"the {word} {noun}, side view", f"{word} {noun} in its box"]
    prompt = f"a photo of the {word} {noun} on the beach"
    with_ctx = suti(prompt, subject_images=exemplars, subject_texts=texts, num_images=4, steps=25, guidance=3.0, seed=0)
    no_ctx = t2i(prompt, num_images=4, steps=25, guidance=3.0, seed=0)
    thumbs = [im.resize((64, 64), Image.NEAREST) for im in exemplars + with_ctx + no_ctx]
    cols = max(k, 4)
    rows_ = [thumbs[:k] + [Image.new("RGB", (64, 64), "white")] * (cols - k), thumbs[k:k + 4], thumbs[k + 4:]]
    make_grid([im for r in rows_ for im in r], cols=cols).save(out / "generate.png")
    # Subject fidelity (CLIP-I with the builder's stand-in embedder): mean cosine to the held-out photos.
    clip = planted_embedder()
    real = clip.embed_images(exemplars)
    fidelity = {name: float((clip.embed_images(ims) @ real.T).mean()) for name, ims in
                (("suti", with_ctx), ("text_to_image", no_ctx))}
    print(f"held-out subject {word!r}: CLIP-I (stand-in) SuTI {fidelity['suti']:.3f} vs text-to-image "
          f"{fidelity['text_to_image']:.3f}")

    summary = {"held_out_subject": f"{word} {noun}", "prompt": prompt, "exemplar_texts": texts,
               "subject_fidelity_clip_i": fidelity, "builder_counts": stats.get("counts"),
               "builder_rates": stats.get("rates"), "t2i_training": t2i_run, "icl_training": icl_run,
               "outputs": {"grid": str(out / "generate.png"), "contact_sheet": str(out / "icl" / "contact_sheet.html"),
                           "suti_pipeline": str(out / "suti"), "t2i_pipeline": str(out / "t2i")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary["outputs"], indent=2))
    print("generate.png rows: exemplars | SuTI samples | text-to-image samples (same prompt, no exemplars)")


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    main()
