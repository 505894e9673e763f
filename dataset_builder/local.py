"""Local streaming backend: one process, memory bounded by a partition (records_per_partition), not the corpus.

The group-by-page step needs a global view; it gets one from disk: ingest spills decoded records in runs sorted
by page hash, and each partition (a range of the page-hash space, sized after ingest so it holds about
records_per_partition records) is read back from every run with one seek per run. Pages over
group.max_page_records are counted from the spill index and never read, so no single page can stretch a
partition past that bound.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
from retrieval.atomic import atomic_write_bytes, atomic_write_json
from tqdm import tqdm

from . import phases
from .components import Components, components_for
from .config import BuilderConfig, ConfigError
from .counts import Counts
from .grouping import oversized_pages
from .inputs import expand_inputs
from .records import Record
from .report import build_stats, contact_sheet_html
from .spill import hash_range, read_run_pages, read_run_partition

OUTPUT_FILES = ("manifest.json", "stats.json", "contact_sheet.html", "timings.json")


def prepare_output(cfg: BuilderConfig, overwrite: bool = False) -> tuple[Path, Path]:
    """Creates output_dir/work, or checks that an existing one was built with the same config."""
    out = Path(cfg.output_dir)
    work = out / "work"
    if overwrite and out.exists():
        for f in list(out.glob("icl-*.tar")) + [out / n for n in OUTPUT_FILES]:
            f.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    for tmp in [*out.glob(".*.tmp*"), *work.rglob(".*.tmp*"), *work.glob("ingest/.tmp-*")]:
        # half-written files of a killed run: never in the output, remove them before resuming
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    saved = phases.marker(work / "config.json")
    if saved is None or not _has_progress(work):  # nothing done yet (e.g. a first run that failed): start fresh
        atomic_write_json(work / "config.json", {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()})
    elif saved["fingerprint"] != cfg.fingerprint():
        old, new = saved["config"], cfg.to_dict()
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                      and k not in ("backend", "progress", "keep_intermediate", "output_dir"))
        raise ConfigError(f"{out} was built with a different config (differs in: {diff}); "
                          "use another output_dir or --overwrite")
    return out, work


def finished_stats(cfg: BuilderConfig) -> dict | None:
    """The stats of a finished build of this very config in output_dir (a rerun is a no-op), else None."""
    out = Path(cfg.output_dir)
    done = phases.marker(out / "work" / "complete.json")
    if done is None or done.get("fingerprint") != cfg.fingerprint():
        return None
    return json.loads((out / "stats.json").read_text())


def _has_progress(work: Path) -> bool:
    return (work / "plan.json").exists() or next(work.rglob("*.done.json"), None) is not None


def _bar(cfg: BuilderConfig, total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="part" if desc != "ingest" else "file", disable=not cfg.progress,
                dynamic_ncols=True, leave=False)


def plan_partitions(cfg: BuilderConfig, work: Path, n_records: int) -> int:
    plan = phases.marker(work / "plan.json")
    if plan is None:
        plan = {"records": n_records, "partitions": max(1, math.ceil(n_records / cfg.records_per_partition))}
        atomic_write_json(work / "plan.json", plan)
    elif plan["records"] != n_records:
        raise RuntimeError(f"{work}/plan.json says {plan['records']} records, ingest markers say {n_records}")
    return plan["partitions"]


def run_tail(cfg: BuilderConfig, get_comps, out: Path, work: Path, num_parts: int,
             run_partition_fn=None, parallel_map=None, ingest_markers: list[dict] | None = None) -> dict:
    """Phases after grouping (shared with the Ray backend, which passes its own parallel map).
    get_comps() is called where the work runs (in a Ray worker: that worker's own components)."""
    pmap = parallel_map or (lambda fn, items, desc: [fn(i) for i in _progress(cfg, items, desc)])
    if run_partition_fn is not None:
        todo = [p for p in range(num_parts) if phases.marker(work / "clusters" / f"{p:05d}.done.json") is None]
        pmap(run_partition_fn, todo, "cluster")
    n_members = sum(phases.marker(work / "clusters" / f"{p:05d}.done.json")["members"] for p in range(num_parts))
    n_cells = 0
    if cfg.dedupe.cross_corpus:
        cent = phases.marker(work / "cells" / "centroids.done.json")
        if cent is None:
            cent = phases.train_centroids(cfg, work, num_parts, n_members)
        n_cells = cent["cells"]
        todo = [p for p in range(num_parts) if phases.marker(work / "cells" / f"{p:05d}.done.json") is None]
        pmap(lambda p: phases.assign_partition(p, cfg, work), todo, "near-dup cells")
        todo = [c for c in range(n_cells) if phases.marker(work / "dedupe" / f"{c:05d}.done.json") is None]
        pmap(lambda c: phases.dedupe_cell(c, cfg, work, num_parts), todo, "near-dup search")
    todo = [p for p in range(num_parts) if phases.marker(work / "shards" / f"{p:05d}.done.json") is None]
    pmap(lambda p: phases.finish_partition(p, cfg, get_comps(), work, out, phases.removed_rows(work, p, n_cells)),
         todo, "targets+write")
    return write_report(cfg, out, work, num_parts, n_cells, ingest_markers)


def _progress(cfg: BuilderConfig, items, desc: str):
    return tqdm(items, desc=desc, disable=not cfg.progress, dynamic_ncols=True, leave=False)


def write_report(cfg: BuilderConfig, out: Path, work: Path, num_parts: int, n_cells: int,
                 ingest_markers: list[dict] | None = None) -> dict:
    counts, timings = Counts(), Counts()
    if ingest_markers is None:
        ingest_markers = [m for m in (phases.marker(f) for f in sorted((work / "ingest").glob("*.done.json")))]
    groups = [ingest_markers,
              [phases.marker(work / "boilerplate" / f"{q:05d}.done.json") for q in range(num_parts)],
              [phases.marker(work / "clusters" / f"{p:05d}.done.json") for p in range(num_parts)],
              [phases.marker(work / "shards" / f"{p:05d}.done.json") for p in range(num_parts)]]
    if n_cells:
        groups.append([phases.marker(work / "cells" / "centroids.done.json")]
                      + [phases.marker(work / "cells" / f"{p:05d}.done.json") for p in range(num_parts)]
                      + [phases.marker(work / "dedupe" / f"{c:05d}.done.json") for c in range(n_cells)])
    for group in groups:
        for m in group:
            counts.update(m.get("counts", {}))
            timings.update(m.get("timings", {}))
    shard_markers = groups[3]
    shards = [{"shard": m["shard"], "samples": m["samples"]} for m in shard_markers if m["shard"]]
    read_errors = sorted((e for m in ingest_markers for e in m.get("read_errors", [])),
                         key=lambda e: e["unit"])  # stable: in-file order kept
    stats = build_stats(counts, {"partitions": num_parts, "cells": n_cells, "k": cfg.k,
                                 "config_fingerprint": cfg.fingerprint(), "read_errors": read_errors})
    manifest = {"format": "suti-icl-webdataset/1", "k": cfg.k, "shards": shards,
                "samples": sum(s["samples"] for s in shards), "config_fingerprint": cfg.fingerprint(),
                "members": ["json", "target.jpg", "target.txt"]
                + [f"ex{i}.{e}" for i in range(cfg.k) for e in ("jpg", "txt")]}
    # partitions are ascending page-hash ranges and each file holds its lowest cluster ids first, so reading
    # partitions in order until enough are found gives the corpus-wide lowest ids (a stable, unbiased sample)
    kept = _first_entries(work / "shards", ".contact.json", num_parts, cfg.report.contact_sheet_clusters)
    rejected = _first_entries(work / "clusters", ".rejected.json", num_parts, cfg.report.contact_sheet_rejected)
    atomic_write_json(out / "stats.json", stats)
    atomic_write_json(out / "manifest.json", manifest)
    atomic_write_bytes(out / "contact_sheet.html", contact_sheet_html(
        kept[: cfg.report.contact_sheet_clusters], rejected[: cfg.report.contact_sheet_rejected], stats).encode())
    atomic_write_json(out / "timings.json", timings.nested())
    atomic_write_json(work / "complete.json", {"fingerprint": cfg.fingerprint()})
    if not cfg.keep_intermediate:
        for sub in ("ingest", "clusters", "cells", "dedupe", "boilerplate", "ray"):
            for f in (work / sub).glob("*"):
                if f.is_dir():
                    shutil.rmtree(f, ignore_errors=True)
                elif not f.name.endswith(".done.json"):
                    f.unlink(missing_ok=True)
    return stats


def _first_entries(folder: Path, suffix: str, num_parts: int, n: int) -> list[dict]:
    out: list[dict] = []
    for p in range(num_parts):
        if len(out) >= n:
            break
        out.extend(json.loads((folder / f"{p:05d}{suffix}").read_text(encoding="utf-8")))
    return out[:n]


def build_local(cfg: BuilderConfig, components: Components | None = None, overwrite: bool = False) -> dict:
    """Runs (or resumes) a build; returns the stats dict that is also written to output_dir/stats.json."""
    done = None if overwrite else finished_stats(cfg)
    if done is not None:
        return done
    units = expand_inputs(cfg.inputs)  # before prepare_output: a typo in a path must not claim output_dir
    if not units:
        raise ConfigError("config has no inputs")
    out, work = prepare_output(cfg, overwrite)
    comps = components or components_for(cfg)
    ingest = []
    with _bar(cfg, len(units), "ingest") as bar:
        for unit in units:
            m = phases.marker(work / "ingest" / f"{unit.uid}.done.json")
            if m is None:
                m = phases.ingest_unit(unit, cfg, work)
            ingest.append(m)
            bar.update(1)
            bar.set_postfix(records=sum(x["records_out"] for x in ingest))
    num_parts = plan_partitions(cfg, work, sum(m["records_out"] for m in ingest))
    runs = phases.all_runs(work, len(units))
    for q in _progress(cfg, range(num_parts), "boilerplate"):
        if phases.marker(work / "boilerplate" / f"{q:05d}.done.json") is None:
            phases.boilerplate_range(q, num_parts, phases.boilerplate_pairs_local(q, num_parts, runs), cfg, work)
    boilerplate = phases.load_boilerplate(work, num_parts)

    def cluster_one(p: int) -> dict:
        timings, counts = Counts(), Counts()
        lo, hi = hash_range(p, num_parts)
        records: list[Record] = []
        with phases.timed(timings, "spill_read"):
            # pages over the page cap are counted from the index and never read (the same counts group_pages
            # would give them, so both backends agree)
            pages = np.concatenate([read_run_pages(r, lo, hi) for r in runs]) if runs else np.zeros(0, np.uint64)
            big = oversized_pages(pages, cfg.max_page_records, counts)
            if len(big):
                counts.add("group.in", int(np.isin(pages, big).sum()))
            for r in runs:
                records.extend(read_run_partition(r, lo, hi, skip_pages=big))
        return phases.cluster_partition(p, records, boilerplate, cfg, comps, work, timings, counts)

    return run_tail(cfg, lambda: comps, out, work, num_parts, run_partition_fn=cluster_one)
