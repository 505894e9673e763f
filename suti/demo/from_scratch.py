"""`suti demo --from-scratch`: the whole path on the world, from a web crawl to judged samples.

    suti demo --from-scratch --out runs/from_scratch            # CPU defaults, about 1 h 40 min on 1-2 cores
    suti demo --from-scratch --out runs/fs --t2i-steps 20000 --suti-steps 20000 --shop-pages 2000  # a GPU

1. crawl: a synthetic img2dataset crawl of the world (shop pages, junk pages, logos, broken files);
2. text-to-image pretraining on the crawl's image-alt-text pairs: the 32 px base stage and a 32 -> 64 px
   super-resolution stage, with the pretrained MiniLM text encoder;
3. the dataset builder: URL clusters, the world CLIP's coherence and CLIP-T/CLIP-I filters, near-duplicate
   removal, new-context prompts in the world's words, and expert targets: the world's renderer for most
   clusters and a DreamBooth expert (the step-2 base fine-tuned per cluster) for the first few, with the
   keep rate of each; cluster purity and recall against the crawl's ground truth;
4. SuTI: the pretrained base converted (context attention at 16x16, 8x8 and the middle) and trained on the
   builder's in-context examples;
5. evaluation on held-out subjects that are on no crawl page: SuTI vs the same cascade without exemplars,
   judged by the world's identity and attribute judges (grid.png, index.html, metrics.json).

Every step resumes: a rerun with the same --out skips finished steps and continues training runs from their
last checkpoint. summary.json gathers the figures.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

# torch and the model code load when a step runs: `suti --help` reads this module's defaults
NUM_EXEMPLARS = 3  # suti.demo.world_suti.NUM_EXEMPLARS (tests/demo/test_from_scratch.py checks they agree)


@dataclass
class FromScratchConfig:
    out: str = "runs/from_scratch"
    shop_pages: int = 300
    junk_pages: int = 40
    crawl_seed: int = 2  # the world CLIP trained on seed 0's crawl; this crawl is new to it
    batch_size: int = 16
    t2i_steps: int = 1200
    sr_steps: int = 2000
    suti_steps: int = 2000
    lr: float = 1e-3
    prompts_per_cluster: int = 8
    dreambooth_clusters: int = 3
    dreambooth_steps: int = 200
    eval_subjects: int = 10
    eval_prompts: int = 5
    eval_samples: int = 2
    sample_steps: int = 20
    guidance: float = 3.0
    progress: bool = True


def _done(out: Path, step: str, **expected) -> dict | None:
    """The record of a finished step, or None when it must run (again): never run, or run with other
    `expected` values (more training steps: the run then resumes from its last checkpoint)."""
    path = out / "steps" / f"{step}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if all(record.get(k) == v for k, v in expected.items()) else None


def _finish(out: Path, step: str, record: dict) -> dict:
    from retrieval.atomic import atomic_write_json

    (out / "steps").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "steps" / f"{step}.json", record)
    return record


def _train(cfg: FromScratchConfig, run: Path, stage: dict, data: dict, steps: int, init_from: str | None = None,
           sample: dict | None = None) -> dict:
    from suti.training import TrainConfig, Trainer

    from .world_suti import MINILM, TEXT_MAX_LENGTH

    t0 = time.perf_counter()
    tc = TrainConfig.from_dict({
        "output_dir": str(run), "stage": stage, "data": data, "steps": steps, "init_from": init_from,
        "text": {"encoder": MINILM, "max_length": TEXT_MAX_LENGTH}, "batch_size": cfg.batch_size,
        "optim": {"lr": cfg.lr, "warmup_steps": min(200, max(1, steps // 10))}, "ema": {"decay": 0.999},
        "checkpoint_every": max(50, steps // 10), "log_every": max(1, min(50, steps // 10)),
        "sample": {"every": 0, "num_held": 4, "steps": cfg.sample_steps, "guidance": cfg.guidance, **(sample or {})},
        "progress": cfg.progress,
    })
    trainer = Trainer(tc)
    result = trainer.train()
    logged = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    losses = [loss for loss in (json.loads(line).get("loss") for line in logged) if loss is not None]
    return {"steps": result["step"], "export_dir": result.get("export_dir"), "samples": result.get("samples"),
            "skipped_samples": result["skipped_samples"], "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "seconds": round(time.perf_counter() - t0, 1)}


def _pipeline(stage_dirs: list[str], folder: Path):
    """The stages as a pipeline saved in `folder`, its cascade.json naming the packaged MiniLM encoder."""
    from suti.cascade import Cascade
    from suti.checkpoint import load_stage
    from suti.config import CascadeConfig
    from suti.pipeline import SuTIPipeline

    from .world_suti import MINILM, TEXT_MAX_LENGTH, load_world_text_encoder

    stages = [load_stage(d) for d in stage_dirs]
    config = CascadeConfig(text_encoder=MINILM, text_max_length=TEXT_MAX_LENGTH, stages=tuple(s.name for s in stages))
    pipe = SuTIPipeline(Cascade(stages), load_world_text_encoder(), config)
    pipe.save_pretrained(folder, save_text_encoder=False)
    return pipe


def _expert_rates(icl: Path, rendered: dict) -> dict:
    from collections import Counter

    from retrieval.shards import iter_tar_samples

    kept, problems = Counter(), []
    for shard in sorted(icl.glob("icl-*.tar")):
        for sample in iter_tar_samples(shard, problems.append):
            kept[json.loads(sample.members["json"])["expert"]] += 1
    if problems:
        raise RuntimeError(f"the builder's shards in {icl} are damaged: {problems[:3]}")
    return {name: {"rendered": n, "kept": kept[name], "keep_rate": round(kept[name] / n, 4) if n else None}
            for name, n in rendered.items()}


def run_from_scratch(cfg: FromScratchConfig) -> dict:
    from .crawl import CrawlConfig, write_crawl

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"config": vars(cfg)}

    print("1/5 crawl -> img2dataset shards")
    rec = _done(out, "crawl")
    if rec is None:
        t0 = time.perf_counter()
        truth = write_crawl(out / "crawl", CrawlConfig(shop_pages=cfg.shop_pages, junk_pages=cfg.junk_pages,
                                                       seed=cfg.crawl_seed), progress=cfg.progress)
        rec = _finish(out, "crawl", {"records": len(truth["records"]), "subjects": len(truth["subjects"]),
                                     "seconds": round(time.perf_counter() - t0, 1)})
    summary["crawl"] = rec
    shards = sorted(str(p) for p in (out / "crawl").glob("*.tar"))

    print("2/5 text-to-image pretraining: 32 px base, then 32 -> 64 px super-resolution")
    t2i = _done(out, "t2i", steps=cfg.t2i_steps) or _finish(out, "t2i", _train(
        cfg, out / "train_t2i", {"preset": "tiny-base32", "name": "base"},
        {"sources": shards, "task": "text_to_image"}, cfg.t2i_steps,
        sample={"prompts": ["a toy on the beach", "a mug in the snow", "a creature in the jungle", "a toy"]}))
    sr = _done(out, "sr", steps=cfg.sr_steps) or _finish(out, "sr", _train(
        cfg, out / "train_sr", {"preset": "tiny-sr64", "name": "sr64"},
        {"sources": shards, "task": "text_to_image"}, cfg.sr_steps))
    summary["t2i"], summary["sr"] = t2i, sr

    print("3/5 dataset builder: clusters, CLIP filters, de-dup, prompts, expert targets")
    # the build does not rerun when only the pretraining grew: its DreamBooth targets keep the earlier base
    build = _done(out, "build") or _finish(out, "build", _build(cfg, out, shards, t2i["export_dir"]))
    summary["build"] = build
    if not build["score"]["clusters"]:
        raise RuntimeError(f"the dataset builder kept no cluster from {out / 'crawl'}; see {out / 'icl'}")

    print("4/5 SuTI: convert the pretrained base, train on the in-context examples")
    icl = sorted(str(p) for p in (out / "icl").glob("icl-*.tar"))
    suti = _done(out, "suti", steps=cfg.suti_steps) or _finish(out, "suti", _train(
        cfg, out / "train_suti", {"preset": None, "context_levels": [1, 2]},
        {"sources": icl, "task": "in_context", "max_exemplars": NUM_EXEMPLARS}, cfg.suti_steps,
        init_from=t2i["export_dir"]))
    summary["suti"] = suti

    print("5/5 evaluation on held-out subjects (on no crawl page)")
    trained = {"t2i_steps": t2i["steps"], "sr_steps": sr["steps"], "suti_steps": suti["steps"],
               "eval_subjects": cfg.eval_subjects, "eval_prompts": cfg.eval_prompts, "eval_samples": cfg.eval_samples,
               "sample_steps": cfg.sample_steps, "guidance": cfg.guidance}
    summary["eval"] = _done(out, "eval", trained=trained) or _finish(
        out, "eval", {"trained": trained, **_evaluate(cfg, out, suti["export_dir"], sr["export_dir"])})
    from retrieval.atomic import atomic_write_json

    atomic_write_json(out / "summary.json", summary)
    return summary


def _build(cfg: FromScratchConfig, out: Path, shards: list[str], t2i_stage: str) -> dict:
    from dataset_builder import build_dataset, config_from_dict
    from dataset_builder.components import Components

    from .crawl import score_clusters
    from .world_builder import WorldExpert, WorldPrompts
    from .world_clip import SHIPPED_WORLD_CLIP

    t0 = time.perf_counter()
    t2i_pipe = out / "t2i_pipeline"
    if not (t2i_pipe / "cascade.json").is_file():
        _pipeline([t2i_stage], t2i_pipe)
    bcfg = config_from_dict({
        "inputs": [{"type": "webdataset", "paths": shards}], "output_dir": str(out / "icl"), "k": NUM_EXEMPLARS,
        "embedder": {"model": f"local-dir:{SHIPPED_WORLD_CLIP}"},
        # the world CLIP's images follow context more than identity: thresholds set for it (docs/world.md)
        "coherence": {"min_member_similarity": 0.1, "min_mean_similarity": 0.25},
        "dedupe": {"threshold": 0.99}, "group": {"boilerplate_min_pages": 3},
        "prompts": {"per_cluster": cfg.prompts_per_cluster},
        # a new-context target shares the subject, not the scene, with its exemplars: CLIP-I is low by design
        "expert": {"min_clip_t": 0.3, "min_clip_i": 0.1},
        "progress": cfg.progress,
    })
    expert = WorldExpert(str(out / "crawl"), size=64, dreambooth_clusters=cfg.dreambooth_clusters,
                         dreambooth={"pipeline": str(t2i_pipe), "steps": cfg.sample_steps, "guidance": cfg.guidance,
                                     "dreambooth": {"steps": cfg.dreambooth_steps}})
    stats = build_dataset(bcfg, overwrite=False,
                          components=Components(bcfg, prompt_generator=WorldPrompts(), expert=expert))
    scores = score_clusters(sorted((out / "icl").glob("icl-*.tar")), out / "crawl")
    scores.pop("per_cluster")
    record = {"counts": stats.get("counts"), "rates": stats.get("rates"), "score": scores,
              "experts": _expert_rates(out / "icl", dict(expert.rendered)), "no_subject_clusters": expert.no_subject,
              "seconds": round(time.perf_counter() - t0, 1)}
    if sum(expert.rendered.values()) != (stats.get("counts") or {}).get("expert", {}).get("rendered"):
        record["experts_note"] = "the build resumed: per-expert rendered counts cover this process's part only"
    return record


def _evaluate(cfg: FromScratchConfig, out: Path, suti_stage: str, sr_stage: str) -> dict:
    from .showcase import pick_prompts, sample_heldout, score, write_report

    t0 = time.perf_counter()
    ids, prompt_ids = list(range(cfg.eval_subjects)), pick_prompts(cfg.eval_prompts)

    def judged(pipe):
        records = sample_heldout(pipe, ids, prompt_ids, cfg.eval_samples, cfg.sample_steps, cfg.guidance)
        return records, score(records)

    pipe = _pipeline([suti_stage, sr_stage], out / "pipeline")
    records, metrics = judged(pipe)
    # the base stage alone (32 px): what SuTI drew, before the super-resolution stage
    _, base_metrics = judged(_pipeline([suti_stage], out / "pipeline_base"))
    meta = {"model": "pipeline (from scratch)", "base_only_32px": base_metrics, "subjects": ids,
            "prompts_per_subject": len(prompt_ids), "samples_per_prompt": cfg.eval_samples,
            "ddim_steps": cfg.sample_steps, "guidance": cfg.guidance,
            "image_size": pipe.cascade.stages[-1].image_size, "seconds": round(time.perf_counter() - t0, 1)}
    write_report(out, records, metrics, meta)
    return {"metrics": metrics, **meta}


def print_summary(summary: dict) -> None:
    b = summary["build"]
    s = b["score"]
    print(f"builder: {s['clusters']} clusters, purity {s['purity']:.3f}, recall {s['recall']:.3f} "
          f"({s['subjects_found']} of {s['subjects_eligible']} subjects)")
    for name, e in b["experts"].items():
        rate = "n/a" if e["keep_rate"] is None else f"{e['keep_rate']:.3f}"
        print(f"expert {name}: rendered {e['rendered']}, kept {e['kept']} (keep rate {rate})")
    for step in ("t2i", "sr", "suti"):
        t = summary[step]
        print(f"{step}: {t['steps']} steps, loss {t['loss_first']} -> {t['loss_last']}, {t['seconds']} s")
    for label, m in (("64 px (base + SR)", summary["eval"]["metrics"]), ("32 px (base)", summary["eval"]["base_only_32px"])):
        print(label)
        for row in ("suti", "text_only", "ground_truth"):
            r = m[row]
            print(f"  {row:14s} identity top-1 {r['identity_top1']:.3f}  cos {r['identity_cosine']:.3f}  "
                  f"text {r['text_fidelity']:.3f}  copy {r['copy_rate']:.3f}")
    print(f"identity chance {m['chance_identity_top1']:.3f}; wrote {summary['config']['out']}/summary.json, "
          "grid.png, index.html")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = FromScratchConfig()
    for name, value in vars(defaults).items():
        if name != "progress":
            ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = ap.parse_args(argv)
    print_summary(run_from_scratch(FromScratchConfig(**vars(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
