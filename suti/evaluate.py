"""DreamBench protocol (Ruiz et al. 2023; SuTI table 1): DINO, CLIP-I and CLIP-T.

For each subject folder (photos of one subject) and each prompt of its kind (object or live), generate
images of that subject with one method and score them:
- ``suti``: the subject's photos are the exemplars (no per-subject training);
- ``dreambooth`` / ``textual_inversion``: the paper's baselines, fine-tuned per subject on the same cascade
  first (the prompt's unique token is the learned identifier).

Scores:
- CLIP-T: cosine between the generated image and the prompt (with the subject's class noun);
- CLIP-I: mean cosine between generated and real images (CLIP image embeddings);
- DINO:   the same with a self-supervised ViT (e.g. ``facebook/dino-vits16`` folder), when given.
Results go to a JSON with per-subject and overall means, next to the paper's anchors, and a PNG grid.
``measured_anchors`` checks the scorers on the photos alone: each real photo against the other photos of its
subject (the paper's "real images" row) and against another subject's photos (a shuffled control).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from .images import ImageLike, make_grid, open_image, to_rgb

LIVE_CLASSES = {"dog", "cat"}
PAPER_ANCHORS = {"suti": [0.741, 0.819, 0.304], "dreambooth_imagen": [0.696, 0.812, 0.306],
                 "re_imagen": [0.600, 0.740, 0.270], "real_images": [0.774, 0.885, None]}


def read_dreambench(root) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Parse ``prompts_and_classes.txt``: subject -> class, and {"object": [...], "live": [...]} prompts."""
    text = (Path(root) / "prompts_and_classes.txt").read_text(encoding="utf-8").splitlines()
    classes, prompts, section = {}, {"object": [], "live": []}, None
    for line in text:
        s = line.strip()
        if not s or s == "Classes" or s == "subject_name,class":
            continue
        low = s.lower()
        if "object prompts" in low:
            section = "object"
            continue
        if "live subject prompts" in low:
            section = "live"
            continue
        if section is None and "," in s:
            name, cls = s.split(",", 1)
            classes[name.strip()] = cls.strip()
        elif section is not None:
            m = re.match(r"""^f?(['"])(.*?)\1""", s)  # 'a {0} {1} in the jungle'.format(...)
            if m:
                prompts[section].append(m.group(2))
    return classes, prompts


def fill(prompt: str, unique_token: str, class_token: str) -> str:
    return prompt.replace("{0}", unique_token).replace("{1}", class_token).replace("{unique_token}", unique_token) \
        .replace("{class_token}", class_token)


class DinoScorer:
    """Image embeddings from a Hugging Face ViT folder (CLS token), L2-normalised."""

    def __init__(self, name_or_path: str, device="cpu"):
        from transformers import AutoImageProcessor, AutoModel

        self.processor = AutoImageProcessor.from_pretrained(name_or_path)
        self.model = AutoModel.from_pretrained(name_or_path).to(device).eval()
        self.device = device

    @torch.no_grad()
    def embed(self, images) -> np.ndarray:
        batch = self.processor(images=[to_rgb(open_image(i)) for i in images], return_tensors="pt").to(self.device)
        cls = self.model(**batch).last_hidden_state[:, 0]
        return torch.nn.functional.normalize(cls.float(), dim=-1).cpu().numpy()


def mean_pairwise(a: np.ndarray, b: np.ndarray) -> float:
    return float((a @ b.T).mean())


METHODS = ("suti", "dreambooth", "textual_inversion")


def leave_one_out_mean(e: np.ndarray) -> float:
    """Mean cosine over the pairs of different rows of ``e`` (the paper's real-images anchor: a photo of a
    subject scored against the other photos of it, never against itself)."""
    k = len(e)
    if k < 2:
        raise ValueError("leave-one-out needs at least 2 photos of a subject")
    m = e @ e.T
    return float((m.sum() - np.trace(m)) / (k * k - k))


def real_image_anchors(root, embedder, dino: "DinoScorer | None" = None, subjects: list[str] | None = None) -> dict:
    """The scorers checked on real photos, with no model involved:
    - ``real_images`` (the paper's oracle row): each photo against the other photos of its subject;
    - ``shuffled``: the photos of the next subject (in name order) against this subject's photos.
    A scorer that is worth reading gives ``real_images`` clearly above ``shuffled``."""
    root = Path(root)
    classes, _ = read_dreambench(root)
    names = subjects or sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in classes)
    photos = {n: sorted((root / n).glob("*.jpg")) for n in names}
    if len(names) < 2 or any(len(v) < 2 for v in photos.values()):
        raise ValueError(f"{root}: anchors need at least 2 subjects with at least 2 photos each")
    scorers = {"clip_i": embedder.embed_images}
    if dino is not None:
        scorers["dino"] = dino.embed
    per_subject = {}
    for metric, embed in scorers.items():
        emb = {n: np.asarray(embed(photos[n])) for n in names}
        for i, n in enumerate(names):
            other = names[(i + 1) % len(names)]
            row = per_subject.setdefault(n, {})
            row[f"real_images_{metric}"] = leave_one_out_mean(emb[n])
            row[f"shuffled_{metric}"] = mean_pairwise(emb[other], emb[n])
    overall = {key: float(np.mean([r[key] for r in per_subject.values()])) for key in next(iter(per_subject.values()))}
    return {"overall": overall, "subjects": per_subject}


def subject_generator(pipe, method: str, name: str, real: list, cls: str, k: int, baseline_steps: int | None):
    """``generate(prompt template, **sampling) -> images`` for one subject. SuTI reads ``k`` of the photos as
    exemplars; the baselines first fine-tune on all of them (timed by the caller)."""
    from .personalize import DreamBoothConfig, TextualInversionConfig, dreambooth, textual_inversion

    if method == "suti":
        return lambda p, **kw: pipe(fill(p, "", cls).replace("  ", " ").strip(), subject_images=real[:k],
                                    subject_texts=f"a photo of a {cls}", **kw)
    steps = {} if baseline_steps is None else {"steps": baseline_steps}
    if method == "dreambooth":
        res = dreambooth(pipe, real, cls, DreamBoothConfig(**steps), progress=False)
        token = res.instance_prompt.split()[1]  # "a sks dog" -> "sks"
        return lambda p, **kw: res.pipe(fill(p, token, cls), **kw)
    if method == "textual_inversion":
        res = textual_inversion(pipe, real, cls, TextualInversionConfig(token=f"<{name}>", **steps), progress=False)
        return lambda p, **kw: pipe(fill(p, res.token, "").replace("  ", " ").strip(), **kw)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def evaluate(pipe, root, embedder, dino: DinoScorer | None = None, subjects: list[str] | None = None,
             prompts_per_subject: int | None = None, num_images: int = 1, k: int = 3, steps: int = 50,
             guidance: float = 5.0, seed: int = 0, grid_path=None, method: str = "suti",
             baseline_steps: int | None = None) -> dict:
    import time

    from tqdm.auto import tqdm

    root = Path(root)
    classes, prompts = read_dreambench(root)
    names = subjects or sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in classes)
    if not names:
        raise ValueError(f"{root}: no subject folders that prompts_and_classes.txt names")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    per_subject, grid = {}, []
    for name in tqdm(names, desc=f"dreambench ({method})"):
        cls = classes[name]
        real: list[ImageLike] = sorted((root / name).glob("*.jpg"))
        if not real:
            raise ValueError(f"{root / name}: no .jpg photos of subject {name!r}")
        kind = "live" if cls in LIVE_CLASSES else "object"
        plist = prompts[kind][:prompts_per_subject] if prompts_per_subject else prompts[kind]
        real_clip = embedder.embed_images(real)
        real_dino = dino.embed(real) if dino else None
        scores = {"clip_i": [], "clip_t": [], "dino": []}
        t0 = time.perf_counter()
        generate = subject_generator(pipe, method, name, real, cls, k, baseline_steps)
        setup_s = time.perf_counter() - t0
        for i, p in enumerate(plist):
            prompt = fill(p, "", cls).replace("  ", " ").strip()  # what CLIP-T scores: the prompt, no identifier
            images = generate(p, num_images=num_images, steps=steps, guidance=guidance, seed=seed + i)
            gen = embedder.embed_images(images)
            scores["clip_i"].append(mean_pairwise(gen, real_clip))
            scores["clip_t"].append(float(embedder.image_text_scores(gen, embedder.embed_texts([prompt] * len(gen))).mean()))
            if dino:
                scores["dino"].append(mean_pairwise(dino.embed(images), real_dino))
            if i == 0:
                grid.extend(images[:1])
        per_subject[name] = {m: (float(np.mean(v)) if v else None) for m, v in scores.items()}
        per_subject[name]["prompts"] = len(plist)
        per_subject[name]["setup_s"] = setup_s  # per-subject fine-tuning time (0 for SuTI)
    overall = {m: (float(np.mean([s[m] for s in per_subject.values()])) if dino or m != "dino" else None)
               for m in ("dino", "clip_i", "clip_t")}
    if grid_path:
        from retrieval.atomic import atomic_path

        with atomic_path(grid_path) as tmp:
            make_grid(grid).save(tmp, format="PNG")
    anchors = real_image_anchors(root, embedder, dino, names) if len(names) >= 2 else None
    return {"method": method, "overall": overall, "subjects": per_subject, "measured_anchors": anchors,
            "paper_anchors_dino_clipi_clipt": PAPER_ANCHORS, "dino_model": None if dino is None else "given",
            "k": k, "steps": steps, "guidance": guidance, "baseline_steps": baseline_steps}


def add_subparser(subparsers):
    p = subparsers.add_parser("evaluate", help="DreamBench protocol: DINO / CLIP-I / CLIP-T")
    p.add_argument("--model", required=True)
    p.add_argument("--dreambench", required=True, help="folder with subject folders and prompts_and_classes.txt")
    p.add_argument("--clip", required=True, help="open_clip model: NAME:PRETRAINED or local-dir:FOLDER")
    p.add_argument("--dino", default=None, help="Hugging Face ViT folder for the DINO metric (optional)")
    p.add_argument("--subjects", nargs="*", default=None)
    p.add_argument("--prompts-per-subject", type=int, default=None)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--method", choices=METHODS, default="suti",
                   help="suti (exemplars, no training) or a per-subject baseline on the same cascade")
    p.add_argument("--baseline-steps", type=int, default=None, help="fine-tuning steps of a baseline (its default)")
    p.add_argument("--out", required=True, help="output JSON (a PNG grid is written beside it)")
    p.add_argument("--allow-unverified-scorer", action="store_true",
                   help="score with a CLIP that is not a known pretrained open_clip model (a local-dir: folder or "
                        "a weights file). Random or untrained weights score near 1 for any image pair, so such "
                        "scores are marked as not comparable with the paper's")
    p.set_defaults(func=_run)


def clip_scorer_status(spec: str) -> tuple[bool, str]:
    """(known pretrained?, why) for a ``--clip`` spec. Known: ``NAME:TAG`` with a tag open_clip lists for that
    architecture, or an ``hf-hub:`` model. A local folder or weights file cannot be told apart from random
    weights, which is what made a randomly initialised CLIP report CLIP-I 0.92 next to the paper's 0.819."""
    if spec.startswith("hf-hub:"):
        return True, "a published Hugging Face hub model"
    if spec.startswith("local-dir:"):
        return False, f"{spec} is a local folder: its weights cannot be checked against a known pretrained model"
    name, _, tag = spec.partition(":")
    if not tag:
        return False, f"{spec} names no pretrained weights (use NAME:TAG, e.g. ViT-B-32:openai)"
    import open_clip

    if (name, tag) in {tuple(x) for x in open_clip.list_pretrained()}:
        return True, f"open_clip pretrained {name}:{tag}"
    return False, f"{tag!r} is not a pretrained tag open_clip knows for {name!r} (see open_clip.list_pretrained())"


def _run(args):
    import sys

    from retrieval import Embedder
    from retrieval.atomic import atomic_write_json

    from .pipeline import SuTIPipeline

    verified, why = clip_scorer_status(args.clip)
    if not verified and not args.allow_unverified_scorer:
        raise ValueError(f"--clip: {why}. A CLIP with random or untrained weights gives CLIP-I near 1 for any "
                         "image pair, so its scores would look better than the paper's. Use a known pretrained "
                         "model, or pass --allow-unverified-scorer if the folder holds one")
    if not verified:
        print(f"suti evaluate: warning: {why}; the scores are marked as not comparable with the paper's",
              file=sys.stderr)
    pipe = SuTIPipeline.from_pretrained(args.model)
    if args.clip.startswith("local-dir:"):
        emb = Embedder.from_pretrained(args.clip)
    else:
        name, _, tag = args.clip.partition(":")
        emb = Embedder.from_pretrained(name, pretrained=tag or None)
    dino = DinoScorer(args.dino) if args.dino else None
    out = Path(args.out)
    res = evaluate(pipe, args.dreambench, emb, dino, args.subjects, args.prompts_per_subject, steps=args.steps,
                   grid_path=out.with_suffix(".png"), method=args.method, baseline_steps=args.baseline_steps)
    res["scorer"] = {"clip": args.clip, "clip_known_pretrained": verified, "clip_status": why, "dino": args.dino,
                     "comparable_with_paper": verified}
    atomic_write_json(out, res)
    print(json.dumps(res["overall"], indent=2))
    if not verified:
        print("note: unverified CLIP scorer: these scores are not comparable with the paper's anchors",
              file=sys.stderr)
