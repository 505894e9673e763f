"""The subject table: SuTI against per-subject fine-tuning on the world's 30 held-out subjects x 25 prompts.

    python benchmarks/subject_table.py [--model FOLDER] [--same-page-model FOLDER] --samples 2

DreamBooth and Textual Inversion fine-tune per subject, so every row over all 30 subjects takes hours on 2 CPU
cores. Each subject's outputs per row are kept under --work (default runs/subject_table/<out name>) as they
finish: a killed run resumes at the next subject, and a later run with more rows reuses the rows it finds
there (a row's cache is checked against the settings that change its outputs). The committed table came
from two runs sharing one --work folder: the per-subject baselines with one thread, then the rest.

Rows (every model row uses the same base model, sampler, steps and guidance):
- text_only: the model without exemplars (its text-to-image branch);
- textual_inversion: one learned token embedding per subject (Gal et al.), on the same model;
- dreambooth: the base stage fine-tuned per subject with "a sks <noun>" and prior preservation (Ruiz et al.);
- suti_same_page: SuTI trained with a same-page photo of the subject as the target (given --same-page-model);
- suti_expert: SuTI trained on the expert's target renders (--model, the shipped model);
- suti_retrieved: the same SuTI model with exemplars retrieved by the prompt from a pairs database of the held-out
  exemplar photos (Re-Imagen mode: the prompt does not name the subject, so this measures retrieval, not identity);
- ground_truth: the world's render of each prompt (the oracle).

Columns: identity top-1 among the 30 and mean identity cosine (subject fidelity), attribute accuracy on what
the prompt asks (text fidelity), copy rate, diversity (pixels and judge embedding), time to first image per
subject and bytes stored per subject. Writes benchmarks/results/subject_table.json, .md and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/retrieval.py would shadow the retrieval package when this folder is first on sys.path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from suti.demo.heldout import NUM_HELDOUT, heldout_subject  # noqa: E402
from suti.demo.showcase import grid_image, pick_prompts, score  # noqa: E402
from suti.demo.world_suti import NUM_EXEMPLARS  # noqa: E402


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def with_noun(prompt: str, noun: str, replacement: str) -> str:
    return re.sub(rf"\b{re.escape(noun)}\b", replacement, prompt, count=1)


class Row:
    """Samples the prompts of one held-out subject; `first_image_seconds` and `bytes` per subject."""

    def __init__(self, pipe, samples, steps, guidance, seed):
        self.pipe, self.samples, self.steps, self.guidance, self.seed = pipe, samples, steps, guidance, seed

    def sample(self, pipe, prompts, i, **kw):
        return pipe(prompts, num_images=self.samples, guidance=self.guidance, steps=self.steps, seed=self.seed + i, **kw)

    def first_image(self, pipe, prompt, **kw) -> float:
        t0 = time.perf_counter()
        pipe(prompt, num_images=1, guidance=self.guidance, steps=self.steps, seed=0, **kw)
        return time.perf_counter() - t0


class TextOnly(Row):
    def run(self, h, prompts, i):
        return self.sample(self.pipe, prompts, i), self.first_image(self.pipe, prompts[0]), 0


class SuTI(Row):
    def run(self, h, prompts, i):
        kw = dict(subject_images=h.exemplar_images(32)[:NUM_EXEMPLARS], subject_texts=h.exemplar_texts[:NUM_EXEMPLARS])
        return self.sample(self.pipe, prompts, i, **kw), self.first_image(self.pipe, prompts[0], **kw), 0


class Retrieved(Row):
    def __init__(self, *a, db):
        super().__init__(*a)
        self.db = db

    def run(self, h, prompts, i):
        images = []
        for n, p in enumerate(prompts):  # retrieval is per prompt
            images += self.pipe(p, retrieve_from=self.db, k=NUM_EXEMPLARS, num_images=self.samples,
                                guidance=self.guidance, steps=self.steps, seed=self.seed + i * 100 + n)
        return images, self.first_image(self.pipe, prompts[0], retrieve_from=self.db, k=NUM_EXEMPLARS), 0


class DreamBooth(Row):
    def __init__(self, *a, steps_ft, lr):
        super().__init__(*a)
        self.steps_ft, self.lr = steps_ft, lr

    def run(self, h, prompts, i):
        from suti.personalize import DreamBoothConfig, dreambooth

        t0 = time.perf_counter()
        result = dreambooth(self.pipe, h.exemplar_images(32), h.subject.noun,
                            DreamBoothConfig(steps=self.steps_ft, lr=self.lr, seed=i), progress=False)
        tuned = [with_noun(p, h.subject.noun, f"{result.config.rare_token} {h.subject.noun}") for p in prompts]
        first = time.perf_counter() - t0 + self.first_image(result.pipe, tuned[0])
        with tempfile.TemporaryDirectory() as tmp:
            stored = folder_bytes(result.save_pretrained(Path(tmp) / "db"))
        return self.sample(result.pipe, tuned, i), first, stored


class TextualInversion(Row):
    def __init__(self, *a, steps_ft, lr):
        super().__init__(*a)
        self.steps_ft, self.lr = steps_ft, lr

    def run(self, h, prompts, i):
        from suti.personalize import TextualInversionConfig, textual_inversion

        token = f"<subject{i:02d}>"
        t0 = time.perf_counter()
        result = textual_inversion(self.pipe, h.exemplar_images(32), h.subject.noun,
                                   TextualInversionConfig(steps=self.steps_ft, lr=self.lr, token=token, seed=i),
                                   progress=False)
        tuned = [with_noun(p, h.subject.noun, token) for p in prompts]
        first = time.perf_counter() - t0 + self.first_image(self.pipe, tuned[0])
        with tempfile.TemporaryDirectory() as tmp:
            stored = result.save(Path(tmp) / "ti.safetensors").stat().st_size
        images = self.sample(self.pipe, tuned, i)
        self.pipe.token_embeddings.pop(token, None)
        return images, first, stored


class SubjectCache:
    """Each row's outputs for one subject, saved as they finish (PNGs, then meta.json last, atomically), so a
    killed run resumes at the next subject instead of fine-tuning every subject again."""

    COMMON = ("model", "prompts", "samples", "steps", "guidance")
    ROW_SETTINGS = {"textual_inversion": ("finetune_steps", "ti_lr"),
                    "dreambooth": ("finetune_steps", "dreambooth_lr"), "suti_same_page": ("same_page_model",)}

    def __init__(self, folder: Path | None, settings: dict):
        self.folder, self.settings = folder, settings

    def _relevant(self, row: str, settings: dict) -> dict:
        """The settings that change a row's outputs: runs with other rows or options share its cache."""
        return {k: settings.get(k) for k in self.COMMON + self.ROW_SETTINGS.get(row, ())}

    def _dir(self, row: str, subject: int) -> Path:
        return self.folder / row / f"s{subject:02d}"

    def load(self, row: str, subject: int):
        if self.folder is None:
            return None
        meta_path = self._dir(row, subject) / "meta.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        if self._relevant(row, meta["settings"]) != self._relevant(row, self.settings):
            raise SystemExit(f"{meta_path} was written with other settings ({self._relevant(row, meta['settings'])}"
                             f"); use another --work folder")
        from PIL import Image

        images = []
        for n in range(meta["images"]):
            with Image.open(meta_path.parent / f"{n:03d}.png") as im:
                images.append(im.convert("RGB"))
        return images, meta["first_image_seconds"], meta["bytes"]

    def save(self, row: str, subject: int, images, first: float, stored: int) -> None:
        if self.folder is None:
            return
        from retrieval.atomic import atomic_path, atomic_write_json

        folder = self._dir(row, subject)
        folder.mkdir(parents=True, exist_ok=True)
        for n, im in enumerate(images):
            with atomic_path(folder / f"{n:03d}.png") as tmp_png:
                im.save(tmp_png, format="PNG")
        atomic_write_json(folder / "meta.json", {"settings": self._relevant(row, self.settings), "images": len(images),
                                                 "first_image_seconds": first, "bytes": stored})


def heldout_database(folder: Path):
    """A PairsDatabase of every held-out subject's exemplar photos and captions, embedded by the world CLIP."""
    from retrieval import Embedder, PairsDatabase
    from suti.demo.world_clip import SHIPPED_WORLD_CLIP

    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for i in range(NUM_HELDOUT):
        h = heldout_subject(i)
        for n, (im, text) in enumerate(zip(h.exemplar_images(32), h.exemplar_texts)):
            im.save(photos / f"s{i:02d}_{n}.png")
            (photos / f"s{i:02d}_{n}.txt").write_text(text)
    db, _ = PairsDatabase.build(folder / "db", Embedder.from_pretrained(f"local-dir:{SHIPPED_WORLD_CLIP}"),
                                image_folder=str(photos), progress=False)
    return db


def markdown(result: dict) -> str:
    cols = [("identity_top1", "identity top-1"), ("identity_cosine", "identity cos"), ("text_fidelity", "text fidelity"),
            ("copy_rate", "copy rate"), ("diversity_pixels", "diversity px"), ("diversity_judge", "diversity judge"),
            ("first_image_seconds", "s to first image"), ("bytes_per_subject", "bytes / subject")]
    lines = ["| row | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in result["rows"].items():
        cells = []
        for key, _ in cols:
            v = m.get(key)
            cells.append("" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    e = result["eval"]
    lines += ["", f"{e['subjects']} held-out subjects x {e['prompts_per_subject']} prompts x {e['samples']} samples, "
                  f"DDIM {e['steps']} steps, guidance {e['guidance']}; identity chance {1 / NUM_HELDOUT:.3f}. "
                  f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="the SuTI model trained on expert targets (default: shipped)")
    ap.add_argument("--same-page-model", default=None, help="SuTI trained on same-page targets")
    ap.add_argument("--subjects", type=int, default=NUM_HELDOUT)
    ap.add_argument("--prompts", type=int, default=25)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--finetune-steps", type=int, default=200, help="DreamBooth / Textual Inversion steps")
    ap.add_argument("--dreambooth-lr", type=float, default=1e-4)
    ap.add_argument("--ti-lr", type=float, default=5e-3)
    ap.add_argument("--rows", default="text_only,textual_inversion,dreambooth,suti_same_page,suti_expert,"
                                      "suti_retrieved,ground_truth")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/subject_table.json")
    ap.add_argument("--start", type=int, default=0, help="begin at this subject and wrap around: a second process "
                                                          "with another start shares the --work cache")
    ap.add_argument("--work", default=None, help="where each subject's outputs are kept so a rerun resumes "
                                                 "(default runs/subject_table/<out name>; 'none' keeps nothing)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from retrieval.atomic import atomic_path, atomic_write_json, atomic_write_text
    from suti.demo.showcase import SHIPPED_WORLD_SUTI
    from suti.pipeline import SuTIPipeline

    pipe = SuTIPipeline.from_pretrained(args.model or SHIPPED_WORLD_SUTI, dtype=torch.float32)
    model = args.model or "suti/demo/assets/world_suti (shipped)"  # recorded without this machine's path
    common = (pipe, args.samples, args.steps, args.guidance, 0)
    wanted = args.rows.split(",")
    tmp = tempfile.TemporaryDirectory()
    rows = {}
    if "text_only" in wanted:
        rows["text_only"] = TextOnly(*common)
    if "textual_inversion" in wanted:
        rows["textual_inversion"] = TextualInversion(*common, steps_ft=args.finetune_steps, lr=args.ti_lr)
    if "dreambooth" in wanted:
        rows["dreambooth"] = DreamBooth(*common, steps_ft=args.finetune_steps, lr=args.dreambooth_lr)
    if "suti_same_page" in wanted and args.same_page_model:
        rows["suti_same_page"] = SuTI(SuTIPipeline.from_pretrained(args.same_page_model, dtype=torch.float32),
                                      *common[1:])
    if "suti_expert" in wanted:
        rows["suti_expert"] = SuTI(*common)
    if "suti_retrieved" in wanted:
        rows["suti_retrieved"] = Retrieved(*common, db=heldout_database(Path(tmp.name)))

    prompt_ids = pick_prompts(args.prompts)
    work = None if args.work == "none" else Path(args.work or Path("runs/subject_table") / Path(args.out).stem)
    settings = {k: getattr(args, k) for k in ("model", "same_page_model", "prompts", "samples", "steps", "guidance",
                                              "finetune_steps", "dreambooth_lr", "ti_lr")}
    cache = SubjectCache(work, settings)
    records, timing, stored = [], {r: [] for r in rows}, {r: [] for r in rows}
    from_cache = {r: 0 for r in rows}  # subjects whose outputs (and timings) an earlier run of --work measured
    order = list(range(args.start, args.subjects)) + list(range(min(args.start, args.subjects)))
    for i in tqdm(order, desc="held-out subjects"):
        h = heldout_subject(i)
        prompts = [h.prompts[j].prompt for j in prompt_ids]
        outputs = {}
        for name, row in rows.items():
            cached = cache.load(name, i)
            if cached is None:
                cached = row.run(h, prompts, i)
                cache.save(name, i, *cached)
            else:
                from_cache[name] += 1
            outputs[name], first, size = cached
            timing[name].append(first)
            stored[name].append(size)
        truth = h.target_images(32)
        for n, j in enumerate(prompt_ids):
            rec = {"subject": i, "prompt_id": j, "prompt": h.prompts[j].prompt, "labels": h.prompts[j].labels,
                   "exemplars": h.exemplar_images(32)[:NUM_EXEMPLARS], "ground_truth": [truth[j]],
                   "seconds": {}}
            for name in rows:
                rec[name] = outputs[name][n * args.samples:(n + 1) * args.samples]
            records.append(rec)
    records.sort(key=lambda r: (r["subject"], r["prompt_id"]))
    results = {}
    for name in rows:
        m = score(records, rows=(name,))[name]
        m["first_image_seconds"] = sum(timing[name]) / len(timing[name])
        m["bytes_per_subject"] = int(sum(stored[name]) / len(stored[name]))
        results[name] = m
    if "ground_truth" in wanted:
        results["ground_truth"] = score(records, rows=("ground_truth",))["ground_truth"]
    result = {
        "command": "python benchmarks/subject_table.py " + " ".join(sys.argv[1:]),
        "model": model, "same_page_model": args.same_page_model,
        "eval": {"subjects": args.subjects, "prompts_per_subject": len(prompt_ids), "samples": args.samples,
                 "steps": args.steps, "guidance": args.guidance, "finetune_steps": args.finetune_steps,
                 "dreambooth_lr": args.dreambooth_lr, "ti_lr": args.ti_lr},
        "chance_identity_top1": 1 / NUM_HELDOUT, "rows": results,
        "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
        "work": str(work) if work else None, "subjects_from_cache": from_cache,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    shown = [r for r in records if r["prompt_id"] in prompt_ids[:4] and r["subject"] < 6]
    with atomic_path(out.with_suffix(".png")) as tmp_png:
        grid_image(shown, columns=["exemplars", *rows, "ground_truth"]).save(tmp_png, format="PNG")
    print(markdown(result))
    tmp.cleanup()


if __name__ == "__main__":
    main()
