"""Ray Data backend (`--backend ray`, extra `suti[ray]`): the same stage functions, distributed.

read (one task per input file) -> decode (map_batches) -> boilerplate (groupby content hash) ->
group by page (groupby on the page-hash partition: every page lies wholly in one partition, and grouping by
partition rather than by single page gives Ray few, shard-sized groups and makes each group's work identical to
the local backend's, so the two backends write byte-identical output) -> clusters, corpus-wide near-dup cells,
targets and shards as parallel tasks over partitions and cells (phases.py).

The output folder must be visible to every worker (local disk for one machine, a shared filesystem for a
cluster). Partition-level done-markers make a rerun skip finished partitions; the decode step is recomputed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from retrieval.atomic import atomic_write_json

from . import phases
from .components import components_for
from .config import BuilderConfig, ConfigError
from .counts import Counts
from .decode import decode_batch
from .grouping import boilerplate_hashes
from .inputs import InputUnit, expand_inputs, read_unit
from .local import finished_stats, plan_partitions, prepare_output, run_tail
from .records import RawRecord, Record, partition_of
from .spill import atomic_save_npy, hash_range

RECORD_FIELDS = ("key", "source", "page_url", "page_key", "page_hash", "image_url", "text", "image", "width",
                 "height", "content_hash")


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError("the ray backend needs Ray Data: pip install 'suti[ray]' (or 'ray[data]')") from e
    return ray


def _record_to_row(r: Record) -> dict:
    # 64-bit hashes travel as hex strings: Arrow would otherwise guess int64 and overflow
    return {"key": r.key, "source": r.source, "page_url": r.page_url, "page_key": r.page_key,
            "page_hash": f"{r.page_hash:016x}", "image_url": r.image_url, "text": r.text, "image": r.image,
            "width": int(r.width), "height": int(r.height), "content_hash": f"{r.content_hash:016x}"}


def _rows_to_records(batch: dict) -> list[Record]:
    n = len(batch["key"])
    return [Record(key=str(batch["key"][i]), source=str(batch["source"][i]), page_url=str(batch["page_url"][i]),
                   page_key=str(batch["page_key"][i]), page_hash=int(batch["page_hash"][i], 16),
                   image_url=str(batch["image_url"][i]), text=str(batch["text"][i]), image=bytes(batch["image"][i]),
                   width=int(batch["width"][i]), height=int(batch["height"][i]),
                   content_hash=int(batch["content_hash"][i], 16)) for i in range(n)]


def _write_stats(stats_dir: Path, name: str, counts: Counts, read_errors: list | None = None) -> None:
    atomic_write_json(stats_dir / f"{name}.json", {"counts": dict(counts), "read_errors": read_errors or []})


def build_ray(cfg: BuilderConfig, overwrite: bool = False, ray_init: dict | None = None) -> dict:
    ray = _require_ray()
    done = None if overwrite else finished_stats(cfg)
    if done is not None:
        return done
    units = expand_inputs(cfg.inputs)  # before prepare_output: a typo in a path must not claim output_dir
    if not units:
        raise ConfigError("config has no inputs")
    out, work = prepare_output(cfg, overwrite)
    if not ray.is_initialized():
        ray.init(**(ray_init or {"include_dashboard": False, "log_to_driver": False}))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(cfg.progress)
    stats_dir = work / "ray" / "stats"
    stats_dir.mkdir(parents=True, exist_ok=True)
    for f in stats_dir.glob("*.json"):
        f.unlink()  # decode is recomputed on every ray run, so its counts are too

    def read_fn(row: dict) -> list[dict]:
        unit = InputUnit(**json.loads(row["unit"]))
        counts, errors = Counts(), []
        rows = []
        for raw in read_unit(unit, counts, errors, cfg.decode.max_file_bytes):
            counts.add("read.records")
            rows.append({"raw": json.dumps({k: v for k, v in raw.__dict__.items() if k != "image_bytes"}),
                         "image_bytes": raw.image_bytes if raw.image_bytes is not None else b"",
                         "has_bytes": raw.image_bytes is not None})
        _write_stats(stats_dir, f"read-{unit.uid}", counts, errors)
        return rows

    def decode_fn(batch: dict) -> dict:
        raws = []
        for meta, data, has in zip(batch["raw"], batch["image_bytes"], batch["has_bytes"]):
            raws.append(RawRecord(**json.loads(meta), image_bytes=bytes(data) if has else None))
        counts = Counts()
        recs = decode_batch(raws, cfg.decode, cfg.group, counts)
        digest = hashlib.blake2b("\n".join(r.key for r in raws).encode(), digest_size=12).hexdigest()
        _write_stats(stats_dir, f"decode-{digest}", counts)
        rows = [_record_to_row(r) for r in recs]
        return {k: [r[k] for r in rows] for k in RECORD_FIELDS}

    unit_rows = [{"unit": json.dumps({"index": u.index, "kind": u.kind, "path": u.path, "spec": u.spec})}
                 for u in units]
    records = (ray.data.from_items(unit_rows, override_num_blocks=len(unit_rows))
               .flat_map(read_fn)
               .map_batches(decode_fn, batch_size=phases.DECODE_BATCH, batch_format="numpy")
               .materialize())
    num_parts = plan_partitions(cfg, work, records.count())

    def add_partition(batch: dict) -> dict:
        batch["partition"] = np.array([partition_of(int(h, 16), num_parts) for h in batch["page_hash"]],
                                      dtype=np.int64)
        return batch

    records = records.map_batches(add_partition, batch_format="numpy").materialize()

    # boilerplate: Ray groupby on the content hash, counting distinct pages per image
    shuffle_parts = max(1, min(num_parts, 64))  # Ray's default (200) is far too many for small runs
    min_pages = cfg.group.boilerplate_min_pages

    def boiler_fn(group: dict) -> dict:
        pairs = np.array([[int(c, 16), int(p, 16)] for c, p in zip(group["content_hash"], group["page_hash"])],
                         dtype=np.uint64).reshape(-1, 2)
        found = boilerplate_hashes(pairs, min_pages)
        return {"content_hash": np.array([f"{int(h):016x}" for h in found], dtype=object)}

    found_rows = (records.select_columns(["content_hash", "page_hash"]).groupby("content_hash", num_partitions=shuffle_parts)
                  .map_groups(boiler_fn, batch_format="numpy").take_all())
    found = np.array(sorted(int(r["content_hash"], 16) for r in found_rows), dtype=np.uint64)
    for q in range(num_parts):  # same per-range files and markers as the local backend
        if phases.marker(work / "boilerplate" / f"{q:05d}.done.json") is None:
            lo, hi = hash_range(q, num_parts)
            part = found[(found >= np.uint64(lo)) & ((found < np.uint64(hi)) if hi < 2**64 else True)]
            atomic_save_npy(work / "boilerplate" / f"{q:05d}.npy", part)
            atomic_write_json(work / "boilerplate" / f"{q:05d}.done.json",
                              {"counts": {"boilerplate.images_found": int(len(part))}, "timings": {}})
    boilerplate = phases.load_boilerplate(work, num_parts)
    boilerplate_ref = ray.put(boilerplate)

    # group by page: Ray groupby on the page partition, then the shared per-partition stage functions
    def cluster_fn(group: dict) -> dict:
        p = int(group["partition"][0])
        if phases.marker(work / "clusters" / f"{p:05d}.done.json") is None:
            phases.cluster_partition(p, _rows_to_records(group), ray.get(boilerplate_ref), cfg,
                                     components_for(cfg), work)
        return {"partition": np.array([p], dtype=np.int64)}

    done = {int(r["partition"]) for r in records.groupby("partition", num_partitions=shuffle_parts)
            .map_groups(cluster_fn, batch_format="numpy").take_all()}
    for p in range(num_parts):  # partitions no record fell into
        if p not in done and phases.marker(work / "clusters" / f"{p:05d}.done.json") is None:
            phases.cluster_partition(p, [], boilerplate, cfg, components_for(cfg), work)

    def ray_map(fn, items, desc):
        if not items:
            return []
        ds = ray.data.from_items([{"i": int(i)} for i in items], override_num_blocks=len(items))
        return [json.loads(r["r"]) for r in ds.map(lambda row: {"r": json.dumps(fn(int(row["i"])))}).take_all()]

    ingest_counts, read_errors = Counts(), []
    for f in sorted(stats_dir.glob("*.json")):
        st = json.loads(f.read_text())
        ingest_counts.update(st["counts"])
        read_errors.extend(st["read_errors"])
    return run_tail(cfg, lambda: components_for(cfg), out, work, num_parts, parallel_map=ray_map,
                    ingest_markers=[{"counts": dict(ingest_counts), "read_errors": read_errors}])
