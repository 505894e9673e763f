"""`suti demo`: the shipped world model draws held-out subjects (never seen in training) from their photos,
next to text-to-image samples of the same prompts, judged by the world's judges.

    suti demo                       # 3 held-out subjects x 4 prompts, about a minute on 2 cores
    suti demo --subjects 30 --prompts 25 --samples 2 --out runs/demo_full

Writes ``grid.png`` (per prompt: exemplars | SuTI samples | text-to-image samples | ground truth),
``index.html`` (the grid and the metrics) and ``metrics.json``, and prints the metrics.

Metrics, per row (SuTI, text-to-image only, ground-truth renders):
- identity top-1: the identity judge retrieves the sample's subject among all 30 held-out subjects'
  exemplars (chance 1/30); identity cosine: mean cosine to the subject's own exemplars;
- text fidelity: attribute-judge accuracy on what each prompt asks;
- copy rate: the share of samples nearer (in pixels) to one of the exemplars than to the ground truth;
- diversity: mean pairwise distance between the samples of one prompt (RMS pixels, 1 - judge cosine).
"""
from __future__ import annotations

import html
import json
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from .heldout import NUM_HELDOUT, heldout_subject
from .world_suti import NUM_EXEMPLARS

SHIPPED_WORLD_SUTI = Path(__file__).resolve().parent / "assets" / "world_suti"
ROWS = ("suti", "text_only", "ground_truth")


def _pixels(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _rms(a, b) -> float:
    return float(np.sqrt(np.mean((_pixels(a) - _pixels(b)) ** 2)))


def pick_prompts(n_prompts: int, total: int = 25) -> list[int]:
    """Evenly spread prompt indices, so a few prompts still cover DreamBench's skills."""
    if n_prompts >= total:
        return list(range(total))
    return sorted({int(round(i * total / n_prompts)) % total for i in range(n_prompts)})


def sample_heldout(pipe, subjects: list[int], prompt_ids: list[int], samples: int = 1, steps: int = 20,
                   guidance: float = 3.0, seed: int = 0, progress=None, guidance_mode: str | None = None,
                   context_guidance: float | None = None) -> list[dict]:
    """One record per (subject, prompt): the prompt, its labels, exemplars, SuTI / text-only samples and
    the ground-truth render, with the seconds each took."""
    size = pipe.cascade.stages[-1].image_size
    ex_size = max(s.image_size for s in pipe.cascade.stages if s.uses_context)
    records = []
    for i in subjects:
        h = heldout_subject(i)
        exemplars = h.exemplar_images(ex_size)[:NUM_EXEMPLARS]
        prompts = [h.prompts[j] for j in prompt_ids]
        texts = [p.prompt for p in prompts]
        t0 = time.perf_counter()
        suti = pipe(texts, subject_images=exemplars, subject_texts=h.exemplar_texts[:NUM_EXEMPLARS],
                    num_images=samples, guidance=guidance, steps=steps, seed=seed + i, guidance_mode=guidance_mode,
                    context_guidance=context_guidance)
        t_suti = time.perf_counter() - t0
        t0 = time.perf_counter()
        t2i = pipe(texts, num_images=samples, guidance=guidance, steps=steps, seed=seed + i)
        t_t2i = time.perf_counter() - t0
        targets = h.target_images(size)
        for n, (j, p) in enumerate(zip(prompt_ids, prompts)):
            records.append({"subject": i, "prompt_id": j, "prompt": p.prompt, "skill": p.skill, "labels": p.labels,
                            "exemplars": exemplars, "suti": suti[n * samples:(n + 1) * samples],
                            "text_only": t2i[n * samples:(n + 1) * samples], "ground_truth": [targets[j]],
                            "seconds": {"suti": t_suti / len(prompts), "text_only": t_t2i / len(prompts)}})
        if progress is not None:
            progress(i)
    return records


def score(records: list[dict], judge=None, rows=ROWS) -> dict:
    """The metrics of each row (a key of the records holding a list of images) over the records."""
    from .judge_weights import load_world_judge
    from .judges import attribute_accuracy, identity_retrieval_top1, identity_scores, to_tensor

    judge = judge or load_world_judge()
    galleries = [heldout_subject(i).exemplar_images(32)[:NUM_EXEMPLARS] for i in range(NUM_HELDOUT)]
    out = {}
    for row in rows:
        images, ids, labels = [], [], []
        copies, own, pix_div, emb_div = [], [], [], []
        for r in records:
            imgs = r[row]
            images += imgs
            ids += [r["subject"]] * len(imgs)
            labels += [r["labels"]] * len(imgs)
            own += list(identity_scores(judge, imgs, galleries[r["subject"]]))
            truth = r["ground_truth"][0]
            for im in imgs:
                ex = [e.resize(im.size, 3) for e in r["exemplars"]]
                copies.append(min(_rms(im, e) for e in ex) < _rms(im, truth.resize(im.size, 3)))
            if len(imgs) > 1:
                emb = judge.identity_embedding(to_tensor(imgs))
                for a, b in combinations(range(len(imgs)), 2):
                    pix_div.append(_rms(imgs[a], imgs[b]))
                    emb_div.append(float(1 - emb[a] @ emb[b]))
        out[row] = {
            "identity_top1": identity_retrieval_top1(judge, images, ids, galleries),
            "identity_cosine": float(np.mean(own)),
            "text_fidelity": attribute_accuracy(judge, images, labels)["overall"],
            "copy_rate": float(np.mean(copies)),
            "diversity_pixels": float(np.mean(pix_div)) if pix_div else None,
            "diversity_judge": float(np.mean(emb_div)) if emb_div else None,
            "samples": len(images),
        }
        if all(row in r.get("seconds", {}) for r in records):
            out[row]["seconds_per_prompt"] = float(np.mean([r["seconds"][row] for r in records]))
    out["chance_identity_top1"] = 1 / NUM_HELDOUT
    return out


def grid_image(records: list[dict], cell: int = 64, columns=("exemplars", "suti", "text_only", "ground_truth")):
    """One row per (subject, prompt): the images of each column (default exemplars | SuTI | text-to-image |
    ground truth), with a gap between columns."""
    from PIL import Image

    cols = [(name, len(records[0][name])) for name in columns]
    gap = cell // 4
    width = sum(n for _, n in cols) * cell + gap * (len(cols) - 1)
    sheet = Image.new("RGB", (width, len(records) * cell), "white")
    for y, r in enumerate(records):
        x = 0
        for name, n in cols:
            for im in r[name][:n]:
                sheet.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (x, y * cell))
                x += cell
            x += gap
    return sheet


def write_html(path: Path, records: list[dict], metrics: dict, meta: dict) -> None:
    from retrieval.atomic import atomic_write_text

    names = {"suti": "SuTI (3 photos)", "text_only": "text-to-image only", "ground_truth": "ground truth (oracle)"}
    cols = ["identity_top1", "identity_cosine", "text_fidelity", "copy_rate", "diversity_pixels", "diversity_judge",
            "seconds_per_prompt"]
    fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    rows = "".join(f"<tr><th>{names[r]}</th>" + "".join(f"<td>{fmt(metrics[r].get(c))}</td>" for c in cols)
                   + "</tr>" for r in ROWS)
    prompts = "".join(f"<li>subject {r['subject']:02d}: {html.escape(r['prompt'])}</li>" for r in records)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>SuTI world demo</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;text-align:right}}
img{{image-rendering:pixelated}}</style></head><body>
<h1>SuTI on held-out subjects of the world</h1>
<p>Each row: the subject's exemplar photos | SuTI samples | text-to-image samples (same model, no photos) |
the ground-truth render of the prompt. Identity chance is {metrics['chance_identity_top1']:.3f}.</p>
<table><tr><th></th>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{rows}</table>
<p><img src="grid.png" alt="sample grid"></p><ol>{prompts}</ol>
<pre>{html.escape(json.dumps(meta, indent=2))}</pre></body></html>"""
    atomic_write_text(path, page)


def write_report(out: Path, records: list[dict], metrics: dict, meta: dict) -> None:
    """grid.png, metrics.json and index.html of a held-out evaluation, each written atomically."""
    from retrieval.atomic import atomic_path, atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "grid.png") as tmp:
        grid_image(records).save(tmp, format="PNG")
    atomic_write_json(out / "metrics.json", {"metrics": metrics, **meta})
    write_html(out / "index.html", records, metrics, meta)


def run_demo(model=None, out="runs/demo", subjects: int | list[int] = 3, prompts: int = 4, samples: int = 1,
             steps: int = 20, guidance: float = 3.0, seed: int = 0) -> dict:
    from tqdm.auto import tqdm

    from suti.pipeline import SuTIPipeline

    start = time.perf_counter()
    model = Path(model) if model else SHIPPED_WORLD_SUTI
    pipe = SuTIPipeline.from_pretrained(model, dtype=torch.float32)
    ids = list(range(subjects)) if isinstance(subjects, int) else list(subjects)
    if not ids or any(not 0 <= i < NUM_HELDOUT for i in ids):
        raise ValueError(f"subjects: held-out subject ids are 0..{NUM_HELDOUT - 1}, got {ids}")
    bar = tqdm(total=len(ids), desc="held-out subjects", unit="subject")
    records = sample_heldout(pipe, ids, pick_prompts(prompts), samples, steps, guidance, seed,
                             progress=lambda _: bar.update(1))
    bar.close()
    metrics = score(records)
    meta = {"model": str(model), "subjects": ids, "prompts_per_subject": len(pick_prompts(prompts)),
            "samples_per_prompt": samples, "ddim_steps": steps, "guidance": guidance, "seed": seed,
            "wall_seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads()}
    write_report(out, records, metrics, meta)
    return {"metrics": metrics, **meta, "out": str(out)}


def print_report(result: dict) -> None:
    m = result["metrics"]
    print(f"{'':22s} {'id top-1':>9s} {'id cos':>7s} {'text':>6s} {'copy':>6s} {'div px':>7s} {'s/prompt':>9s}")
    for row in ROWS:
        r = m[row]
        div = "" if r["diversity_pixels"] is None else f"{r['diversity_pixels']:.3f}"
        sec = f"{r['seconds_per_prompt']:.2f}" if "seconds_per_prompt" in r else ""
        print(f"{row:22s} {r['identity_top1']:9.3f} {r['identity_cosine']:7.3f} {r['text_fidelity']:6.3f} "
              f"{r['copy_rate']:6.3f} {div:>7s} {sec:>9s}")
    print(f"identity chance {m['chance_identity_top1']:.3f}; {result['wall_seconds']} s; wrote {result['out']}/"
          "index.html, grid.png, metrics.json")
