"""The builder's phases as functions over one unit, one partition or one cell, shared by both backends.

Every phase writes its outputs atomically and then a done-marker (JSON with its counts), so a killed run
resumes at the first missing marker and produces the same bytes as an uninterrupted run.

work/ layout:
  config.json                      fingerprint of the config that built this folder
  ingest/<unit>/run-*.bin|.npy     decoded records, sorted runs (local backend)     + ingest/<unit>.done.json
  plan.json                        number of records after decoding, number of partitions P
  boilerplate/<q>.npy              content hashes found on many pages, per hash range  + .done.json
  clusters/<p>.bin|.emb.npy|.ids.npy  coherent, deduplicated clusters of partition p   + .done.json
  cells/centroids.npy, cells/<p>.npy  corpus-wide near-dup cells                       + .done.json
  dedupe/<c>.npy                   (partition, row) removed by the corpus-wide pass     + .done.json
  shards/<p>.done.json             the partition's ICL shard was written (counts, contact-sheet entries)
"""
from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from retrieval.atomic import atomic_write_bytes, atomic_write_json

from .captions import caption_clusters, fill_missing_captions
from .coherence import coherence_filter
from .components import Components
from .config import BuilderConfig
from .counts import Counts
from .decode import decode_batch
from .dedupe import assign_cells, cross_corpus_removals, dedupe_within, num_cells, sample_threshold, train_cells
from .embedding import embed_clusters
from .experts import filter_targets
from .grouping import boilerplate_hashes, group_pages
from .inputs import InputUnit, read_unit
from .prompts import cluster_subject, prompts_for
from .records import Cluster, Member, Record, hash64
from .report import thumbnail_uri
from .samples import build_samples, choose_exemplars
from .spill import (atomic_save_npy, encode_frame, hash_range, iter_frames, list_runs, load_npy, read_run_hashes,
                    write_run)
from .writer import write_icl_shard

DECODE_BATCH = 256


@contextmanager
def timed(timings: Counts, name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] += time.perf_counter() - t0


class TimedEmbedder:
    """Wraps an embedder to time its forward passes apart from the stages around them
    (timings["<prefix>_images"], ["<prefix>_texts"] and the counts "<prefix>_images_n", "<prefix>_texts_n")."""

    def __init__(self, inner, timings: Counts, prefix: str):
        self.inner, self.timings, self.prefix = inner, timings, prefix

    def embed_images(self, images):
        with timed(self.timings, f"{self.prefix}_images"):
            out = self.inner.embed_images(images)
        self.timings[f"{self.prefix}_images_n"] += len(images)
        return out

    def embed_texts(self, texts):
        with timed(self.timings, f"{self.prefix}_texts"):
            out = self.inner.embed_texts(texts)
        self.timings[f"{self.prefix}_texts_n"] += len(texts)
        return out


def marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def partition_name(p: int) -> str:
    return f"{p:05d}"


# --- phase 1: ingest (read + decode, spilled as sorted runs) ------------------------------------------------

def ingest_unit(unit: InputUnit, cfg: BuilderConfig, work: Path) -> dict:
    counts, timings = Counts(), Counts()
    final = work / "ingest" / unit.uid
    tmp = work / "ingest" / f".tmp-{unit.uid}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp.mkdir(parents=True)
    raws, run, n_runs, n_out = [], [], 0, 0

    def flush_decode():
        nonlocal raws
        with timed(timings, "decode"):
            run.extend(decode_batch(raws, cfg.decode, cfg.group, counts))
        raws = []

    def flush_run():
        nonlocal run, n_runs, n_out
        with timed(timings, "spill"):
            write_run(tmp, n_runs, run)
        n_out += len(run)
        n_runs, run = n_runs + 1, []

    t_read = time.perf_counter()
    errors: list = []
    for raw in read_unit(unit, counts, errors, cfg.decode.max_file_bytes):
        counts.add("read.records")
        raws.append(raw)
        if len(raws) >= DECODE_BATCH:
            flush_decode()
            if len(run) >= cfg.run_size:
                flush_run()
    flush_decode()
    if run:
        flush_run()
    timings["read"] += time.perf_counter() - t_read - timings["decode"] - timings["spill"]
    tmp.replace(final)
    result = {"unit": unit.describe(), "records_out": n_out, "counts": dict(counts), "timings": dict(timings),
              "read_errors": errors}
    atomic_write_json(work / "ingest" / f"{unit.uid}.done.json", result)
    return result


def all_runs(work: Path, n_units: int) -> list[Path]:
    runs = []
    for u in range(n_units):
        runs.extend(list_runs(work / "ingest" / f"{u:05d}"))
    return runs


# --- phase 2: boilerplate per content-hash range -------------------------------------------------------------

def boilerplate_range(q: int, num_parts: int, pairs: np.ndarray, cfg: BuilderConfig, work: Path) -> dict:
    t0 = time.perf_counter()
    found = boilerplate_hashes(pairs, cfg.group.boilerplate_min_pages)
    atomic_save_npy(work / "boilerplate" / f"{partition_name(q)}.npy", found)
    result = {"counts": {"boilerplate.images_found": int(len(found))},
              "timings": {"boilerplate": time.perf_counter() - t0}}
    atomic_write_json(work / "boilerplate" / f"{partition_name(q)}.done.json", result)
    return result


def boilerplate_pairs_local(q: int, num_parts: int, runs: list[Path]) -> np.ndarray:
    lo, hi = hash_range(q, num_parts)
    parts = [read_run_hashes(r, lo, hi) for r in runs]
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.uint64)


def load_boilerplate(work: Path, num_parts: int) -> np.ndarray:
    arrs = [load_npy(work / "boilerplate" / f"{partition_name(q)}.npy") for q in range(num_parts)]
    return np.sort(np.concatenate(arrs)).astype(np.uint64) if arrs else np.zeros(0, dtype=np.uint64)


# --- phase 3: group, embed, coherence, in-cluster dedupe, per page partition ----------------------------------

def rejected_summary(c: Cluster, reason: str, thumb: int, max_members: int = 8) -> dict:
    return {"cluster_id": c.cluster_id, "page_url": c.page_key, "reason": reason,
            "mean_similarity": None if c.mean_similarity is None else round(c.mean_similarity, 6),
            "members": [{"thumb": thumbnail_uri(m.record.image, thumb), "caption": m.record.text}
                        for m in c.members[:max_members]]}


def cluster_partition(p: int, records: list[Record], boilerplate: np.ndarray, cfg: BuilderConfig,
                      comps: Components, work: Path, timings: Counts | None = None,
                      counts: Counts | None = None) -> dict:
    """counts: what the caller already counted for this partition (pages it dropped without reading them)."""
    counts, timings = Counts(counts or {}), timings if timings is not None else Counts()
    embedder = TimedEmbedder(comps.embedder, timings, "clip_embed")
    rejected: list = []
    with timed(timings, "group"):
        clusters = group_pages(records, boilerplate, cfg.min_cluster_size, cfg.group.max_cluster_size, counts,
                               cfg.max_page_records)
    del records
    with timed(timings, "embed"):
        embed_clusters(clusters, embedder, cfg.embedder.batch_size, counts,
                       with_text=cfg.coherence.min_image_text_score is not None)
    with timed(timings, "coherence"):
        clusters = coherence_filter(clusters, cfg.coherence, cfg.min_cluster_size, counts, rejected)
    with timed(timings, "dedupe_within"):
        clusters = dedupe_within(clusters, cfg.dedupe.threshold, cfg.min_cluster_size, counts, rejected)
    with timed(timings, "spill"):
        frames, emb, ids = [], [], []
        for c in clusters:
            for rank, m in enumerate(c.members):
                meta = m.meta()
                meta.update(cluster_hash=c.page_hash, mean_similarity=c.mean_similarity, rank=rank)
                frames.append(encode_frame(meta, m.record.image))
                emb.append(m.embedding)
                ids.append((c.page_hash, hash64(m.record.key)))
        name = partition_name(p)
        atomic_write_bytes(work / "clusters" / f"{name}.bin", b"".join(frames))
        dim = len(emb[0]) if emb else 0
        atomic_save_npy(work / "clusters" / f"{name}.emb.npy",
                        np.asarray(emb, dtype=np.float32).reshape(len(emb), dim))
        atomic_save_npy(work / "clusters" / f"{name}.ids.npy", np.asarray(ids, dtype=np.uint64).reshape(-1, 2))
    rejected.sort(key=lambda cr: cr[0].page_hash)
    summaries = [rejected_summary(c, r, cfg.report.thumb_size) for c, r in rejected[: cfg.report.contact_sheet_rejected]]
    # contact-sheet entries live beside the marker: the report reads only as many partitions as it needs
    atomic_write_json(work / "clusters" / f"{name}.rejected.json", summaries)
    result = {"members": len(frames), "clusters": len(clusters), "counts": dict(counts), "timings": dict(timings)}
    atomic_write_json(work / "clusters" / f"{name}.done.json", result)
    return result


def read_cluster_partition(work: Path, p: int) -> tuple[list[Cluster], np.ndarray]:
    name = partition_name(p)
    data = (work / "clusters" / f"{name}.bin").read_bytes()
    emb = load_npy(work / "clusters" / f"{name}.emb.npy")
    clusters: list[Cluster] = []
    for row, (meta, blob) in enumerate(iter_frames(data, str(work / "clusters" / f"{name}.bin"))):
        if not clusters or clusters[-1].page_hash != meta["cluster_hash"]:
            clusters.append(Cluster(page_hash=meta["cluster_hash"], page_key=meta["page_key"], members=[],
                                    mean_similarity=meta["mean_similarity"]))
        m = Member(Record.from_meta(meta, blob), embedding=emb[row], image_text_score=meta["image_text_score"],
                   centroid_similarity=meta["centroid_similarity"], row=row)
        clusters[-1].members.append(m)
    return clusters, emb


# --- phase 4: corpus-wide near-duplicates (cells) ---------------------------------------------------------------

def train_centroids(cfg: BuilderConfig, work: Path, num_parts: int, n_members: int) -> dict:
    n_cells = num_cells(n_members, cfg.dedupe.cell_size)
    t0 = time.perf_counter()
    dim = 0
    if n_cells > 1:
        thr = sample_threshold(n_members, cfg.dedupe.sample_size)
        keys, rows = [], []
        for p in range(num_parts):
            ids = load_npy(work / "clusters" / f"{partition_name(p)}.ids.npy")
            if thr >= 2**64:
                sel = np.arange(len(ids))
            else:
                sel = np.nonzero(ids[:, 1] < np.uint64(thr))[0] if len(ids) else np.zeros(0, dtype=np.int64)
            if len(sel):
                emb = load_npy(work / "clusters" / f"{partition_name(p)}.emb.npy", mmap=True)
                keys.append(ids[sel, 1])
                rows.append(np.asarray(emb[sel]))
        keys = np.concatenate(keys)
        sample = np.concatenate(rows)[np.argsort(keys, kind="stable")]
        centroids = train_cells(sample, n_cells)
    else:
        for p in range(num_parts):
            emb = load_npy(work / "clusters" / f"{partition_name(p)}.emb.npy", mmap=True)
            dim = max(dim, emb.shape[1])
        centroids = np.zeros((1, dim), dtype=np.float32)
    atomic_save_npy(work / "cells" / "centroids.npy", centroids.astype(np.float32))
    result = {"cells": int(len(centroids)), "timings": {"dedupe_cells": time.perf_counter() - t0}}
    atomic_write_json(work / "cells" / "centroids.done.json", result)
    return result


def assign_partition(p: int, cfg: BuilderConfig, work: Path) -> dict:
    t0 = time.perf_counter()
    centroids = load_npy(work / "cells" / "centroids.npy")
    emb = load_npy(work / "clusters" / f"{partition_name(p)}.emb.npy")
    rows, cells = assign_cells(emb, centroids, cfg.dedupe.second_cell_margin) if len(emb) else \
        (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    table = np.stack([cells, rows], axis=1).astype(np.int64).reshape(-1, 2)
    table = table[np.lexsort((table[:, 1], table[:, 0]))]
    atomic_save_npy(work / "cells" / f"{partition_name(p)}.npy", table)
    result = {"timings": {"dedupe_assign": time.perf_counter() - t0}}
    atomic_write_json(work / "cells" / f"{partition_name(p)}.done.json", result)
    return result


def dedupe_cell(c: int, cfg: BuilderConfig, work: Path, num_parts: int) -> dict:
    t0 = time.perf_counter()
    embs, chash, where = [], [], []
    for p in range(num_parts):
        # memory-mapped and sorted by cell: a binary search touches only this cell's slice
        table = load_npy(work / "cells" / f"{partition_name(p)}.npy", mmap=True)
        if len(table) == 0:
            continue
        a, b = np.searchsorted(table[:, 0], c, "left"), np.searchsorted(table[:, 0], c, "right")
        if a == b:
            continue
        rows = np.asarray(table[a:b, 1])
        emb = load_npy(work / "clusters" / f"{partition_name(p)}.emb.npy", mmap=True)
        ids = load_npy(work / "clusters" / f"{partition_name(p)}.ids.npy", mmap=True)
        embs.append(np.asarray(emb[rows]))
        chash.append(np.asarray(ids[rows, 0]))
        where.append(np.stack([np.full(len(rows), p), rows], axis=1))
    if embs:
        gone = cross_corpus_removals(np.concatenate(embs), np.concatenate(chash), cfg.dedupe.threshold)
        removed = np.concatenate(where)[gone].astype(np.int64).reshape(-1, 2)
    else:
        removed = np.zeros((0, 2), dtype=np.int64)
    atomic_save_npy(work / "dedupe" / f"{partition_name(c)}.npy", removed)
    result = {"timings": {"dedupe_cross": time.perf_counter() - t0}}
    atomic_write_json(work / "dedupe" / f"{partition_name(c)}.done.json", result)
    return result


def removed_rows(work: Path, p: int, n_cells: int) -> set[int]:
    out: set[int] = set()
    for c in range(n_cells):
        arr = load_npy(work / "dedupe" / f"{partition_name(c)}.npy")
        if len(arr):
            out.update(arr[arr[:, 0] == p, 1].tolist())
    return out


# --- phase 5: captions, prompts, expert targets, CLIP filter, ICL shard -----------------------------------------

def _round(x):
    return None if x is None else round(x, 6)


def cluster_summary(c: Cluster, subject: str, exemplars: list[int], targets, thumb: int) -> dict:
    return {
        "cluster_id": c.cluster_id, "page_url": c.page_key, "subject": subject, "n_members": len(c.members),
        "mean_similarity": None if c.mean_similarity is None else round(c.mean_similarity, 6),
        "exemplars": [{"thumb": thumbnail_uri(c.members[i].record.image, thumb), "caption": c.members[i].caption,
                       "centroid_similarity": round(c.members[i].centroid_similarity or 0.0, 6)} for i in exemplars],
        "targets": [{"thumb": thumbnail_uri(t.jpeg, thumb), "prompt": t.prompt, "skill": t.skill,
                     "clip_t": _round(t.clip_t), "clip_i": _round(t.clip_i), "kept": t.kept,
                     "reject_reason": t.reject_reason} for t in targets],
    }


def finish_partition(p: int, cfg: BuilderConfig, comps: Components, work: Path, out_dir: Path,
                     removed: set[int]) -> dict:
    counts, timings = Counts(), Counts()
    embedder = TimedEmbedder(comps.embedder, timings, "clip_filter")
    with timed(timings, "load"):
        clusters, _ = read_cluster_partition(work, p)
    kept_clusters = []
    for c in clusters:
        before = len(c.members)
        c.members = [m for m in c.members if m.row not in removed]
        counts.add("dedupe.dropped.near_duplicate_across_corpus", before - len(c.members))
        if len(c.members) < cfg.min_cluster_size:
            counts.add("dedupe.dropped.cluster_too_small_after_corpus_dedupe", len(c.members))
            counts.add("dedupe.clusters_dropped.too_small_after_corpus_dedupe")
            continue
        counts.add("dedupe.out", len(c.members))
        counts.add("dedupe.clusters_out")
        kept_clusters.append(c)
    with timed(timings, "captions"):
        caption_clusters(kept_clusters, comps.captioner, cfg.captions, counts)
    samples, summaries = [], []
    for c in kept_clusters:
        with timed(timings, "prompts"):
            subject = cluster_subject([m.caption for m in c.members], c.page_key, counts)
            exemplars = choose_exemplars(c, cfg.k)  # before the fill: members with their own caption first
            fill_missing_captions(c, subject, counts)
            prompts = prompts_for(comps.prompt_generator, c.cluster_id, subject, cfg.prompts.per_cluster, counts) \
                if getattr(comps.expert, "uses_prompts", True) else []
        with timed(timings, "expert"):
            targets = comps.expert.render(c, exemplars, prompts)
        with timed(timings, "target_filter"):
            ex_emb = np.stack([c.members[i].embedding for i in exemplars])
            kept = filter_targets(targets, ex_emb, embedder, cfg.expert, cfg.embedder.batch_size, counts)
        with timed(timings, "samples"):
            new = build_samples(c, exemplars, kept, subject)
            samples.extend(new)
            counts.add("write.clusters" if new else "write.clusters_without_targets")
            if len(summaries) < cfg.report.contact_sheet_clusters:
                summaries.append(cluster_summary(c, subject, exemplars, targets, cfg.report.thumb_size))
    shard = None
    with timed(timings, "write"):
        if samples:
            shard = f"icl-{p:06d}.tar"
            size = write_icl_shard(samples, out_dir / shard)
            counts.add("write.shards")
            counts.add("write.samples", len(samples))
            counts.add("write.bytes", size)
    atomic_write_json(work / "shards" / f"{partition_name(p)}.contact.json", summaries)
    result = {"partition": p, "shard": shard, "samples": len(samples), "counts": dict(counts),
              "timings": dict(timings)}
    atomic_write_json(work / "shards" / f"{partition_name(p)}.done.json", result)
    return result
