"""Stage 2: boilerplate removal and grouping by normalised page URL, with cluster size bounds.

Pages with more than `group.max_page_records` records (default 2 x max_cluster_size) are dropped before
anything else, as too-large clusters. Boilerplate (logos, icons, banners) is found by content hash: an image
whose decoded pixels occur on at least `boilerplate_min_pages` distinct pages. Counting is done per content-hash
range over spilled (content, page) pairs, so no step holds the whole corpus.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .counts import Counts
from .records import Cluster, Member, Record


def boilerplate_hashes(pairs: np.ndarray, min_pages: int) -> np.ndarray:
    """pairs: (n, 2) uint64 (content_hash, page_hash). Returns the sorted content hashes seen on >= min_pages pages."""
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.uint64)
    distinct = np.unique(np.ascontiguousarray(pairs, dtype=np.uint64), axis=0)
    hashes, n_pages = np.unique(distinct[:, 0], return_counts=True)
    return np.sort(hashes[n_pages >= min_pages]).astype(np.uint64)


def is_in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if len(sorted_set) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(sorted_set, values)
    pos[pos >= len(sorted_set)] = len(sorted_set) - 1
    return sorted_set[pos] == values


def member_order(r: Record):
    """Within a page: largest image first, then by URL and key, so 'keep the first' keeps the best copy."""
    return (-(r.width * r.height), r.image_url, r.key)


def oversized_pages(page_hashes: np.ndarray, max_records: int, counts: Counts) -> np.ndarray:
    """Sorted hashes of the pages with more than `max_records` records (raw, before boilerplate and in-page
    duplicate removal). They are counted here as dropped too-large clusters, so a backend that knows the page
    hashes (the local spill index) can skip reading their images: memory stays bounded by a partition, not by
    the largest page."""
    if len(page_hashes) == 0:
        return np.zeros(0, dtype=np.uint64)
    hashes, n = np.unique(np.asarray(page_hashes, dtype=np.uint64), return_counts=True)
    big = n > max_records
    if big.any():  # no zero-valued keys: stats stay the same as before for corpora without such pages
        counts.add("group.pages", int(big.sum()))
        counts.add("group.dropped.cluster_too_large", int(n[big].sum()))
        counts.add("group.clusters_dropped.too_large", int(big.sum()))
    return hashes[big]


def group_pages(records: Iterable[Record], boilerplate: np.ndarray, min_size: int, max_size: int,
                counts: Counts, max_page_records: int | None = None) -> list[Cluster]:
    """Pure stage function over all records of a partition (every page lies wholly inside one partition).
    Pages with more than `max_page_records` records are dropped first (see oversized_pages)."""
    records = list(records)
    counts.add("group.in", len(records))
    if max_page_records is not None and records:
        page_hashes = np.array([r.page_hash for r in records], dtype=np.uint64)
        big = oversized_pages(page_hashes, max_page_records, counts)
        if len(big):
            records = [r for r, b in zip(records, is_in_sorted(page_hashes, big)) if not b]
    content = np.array([r.content_hash for r in records], dtype=np.uint64)
    is_boiler = is_in_sorted(content, boilerplate)
    pages: dict[int, list[Record]] = {}
    for r, boiler in zip(records, is_boiler):
        if boiler:
            counts.add("group.dropped.boilerplate")
            continue
        pages.setdefault(r.page_hash, []).append(r)
    clusters: list[Cluster] = []
    for page_hash in sorted(pages):
        members = sorted(pages[page_hash], key=member_order)
        seen: set[int] = set()
        unique = []
        for r in members:
            if r.content_hash in seen:
                counts.add("group.dropped.duplicate_in_page")
                continue
            seen.add(r.content_hash)
            unique.append(r)
        counts.add("group.pages")
        if len(unique) < min_size:
            counts.add("group.dropped.cluster_too_small", len(unique))
            counts.add("group.clusters_dropped.too_small")
            continue
        if len(unique) > max_size:
            counts.add("group.dropped.cluster_too_large", len(unique))
            counts.add("group.clusters_dropped.too_large")
            continue
        clusters.append(Cluster(page_hash=page_hash, page_key=unique[0].page_key, members=[Member(r) for r in unique]))
        counts.add("group.out", len(unique))
        counts.add("group.clusters_out")
    return clusters
