"""A synthetic web crawl of the subject world in img2dataset's webdataset layout, with its ground truth.

Shards `{shard:05d}.tar` hold `{key}.jpg`, `{key}.txt` and `{key}.json` (`url`, `caption`, `page_url`,
`key`, `status: "success"`, `width`, `height`), as `img2dataset --output_format webdataset` writes them.
Page kinds:
- shop pages show one subject in varied contexts with noisy alt text (some products are sold on two
  shops, and some shop URLs differ only by tracking parameters);
- junk pages (blogs, listings) mix several subjects;
- boilerplate images (site logos, banners) repeat under the same URL on every page of their site;
- a few files are broken (truncated JPEGs, HTML error pages served as .jpg).
`ground_truth.json` beside the shards maps each record key and image URL to its subject and page kind;
`score_clusters` rates a builder's clusters against it (purity and recall).
"""
from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from retrieval.atomic import atomic_path, atomic_write_json

from .heldout import training_subject
from .world import COLOUR_NAMES, Context, Subject, prompt_for, random_context, render, render_boilerplate

GROUND_TRUTH_FILE = "ground_truth.json"
NOUNS = {"toy": ("toy", "plush toy", "toy figure"), "mug": ("mug", "coffee mug", "cup"),
         "creature": ("creature", "monster", "critter")}
_SYLLABLES = ("zor", "bli", "ka", "mo", "ru", "tan", "pel", "vix", "do", "lu", "fen", "gra", "ni", "sto", "qua")


@dataclass
class CrawlConfig:
    shop_pages: int = 160
    junk_pages: int = 30
    images_per_page: tuple[int, int] = (4, 8)
    sites: int = 12
    repeat_subject_prob: float = 0.15  # a product also sold on another shop
    tracking_variant_prob: float = 0.1  # the same shop page under a second URL (?utm_source=...)
    boilerplate_prob: float = 0.5  # a page carries its site's logo or banner
    broken_prob: float = 0.015  # per image: truncated JPEG or an HTML error page
    image_sizes: tuple[int, ...] = (96, 128, 160)
    samples_per_shard: int = 500
    jpeg_quality: int = 90
    seed: int = 0


@dataclass
class _Item:
    url: str
    page_url: str
    caption: str
    page_kind: str  # shop | junk
    kind: str  # subject | boilerplate | broken
    subject: Subject | None = None
    context: Context | None = None
    size: int = 128
    seed: int = 0
    boilerplate: int | None = None
    broken: str | None = None  # truncated | html


def _brand(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _alt_text(rng: random.Random, brand: str, noun: str, ctx: Context, n: int) -> str:
    """Noisy shop alt text: often the product name and what the photo shows, sometimes junk."""
    described = prompt_for(noun, ctx)
    r = rng.random()
    if r < 0.45:
        return f"{brand} {described}"
    if r < 0.6:
        return described
    if r < 0.72:
        return f"{brand} {noun} - buy now, free shipping"
    if r < 0.82:
        return f"{brand} {noun}"
    if r < 0.9:
        return f"IMG_{rng.randint(1000, 9999)}.jpg"
    if r < 0.95:
        return ""
    return f"{brand} {noun} {rng.choice(COLOUR_NAMES)} sale {n}"


def plan_crawl(config: CrawlConfig) -> list[_Item]:
    """Every record of the crawl, in order, without pixels (deterministic in config.seed)."""
    rng = random.Random(f"crawl:{config.seed}")
    sites = [f"{_brand(rng).lower()}shop" for _ in range(config.sites)]
    items: list[_Item] = []
    sold: list[tuple[Subject, str, str]] = []
    lo, hi = config.images_per_page

    def boilerplate(site_index: int, page_url: str, page_kind: str) -> None:
        if rng.random() < config.boilerplate_prob:
            b = site_index * 2 + rng.randrange(2)
            name = "logo.png" if b % 2 == 0 else "banner.jpg"
            items.append(_Item(url=f"https://cdn.{sites[site_index]}.example.com/static/{name}", page_url=page_url,
                               caption=rng.choice([f"{sites[site_index]} logo", "banner", "", "home"]),
                               page_kind=page_kind, kind="boilerplate", boilerplate=b, size=96))

    for p in range(config.shop_pages):
        site = rng.randrange(config.sites)
        if sold and rng.random() < config.repeat_subject_prob:
            subject, brand, noun = rng.choice(sold)
        else:
            subject = training_subject(rng)
            brand, noun = _brand(rng), rng.choice(NOUNS[subject.cls])
            sold.append((subject, brand, noun))
        slug = f"{brand.lower()}-{noun.replace(' ', '-')}"
        page_url = f"https://{sites[site]}.example.com/products/{slug}-{p}"
        urls = [page_url]
        if rng.random() < config.tracking_variant_prob:
            urls.append(page_url + f"?utm_source=feed&ref={rng.randint(1, 99)}")
        for u, url in enumerate(urls):
            size = rng.choice(config.image_sizes)
            for n in range(rng.randint(lo, hi)):
                ctx = random_context(rng, p_specified=0.55)
                if rng.random() < 0.7:  # product photos: mostly photos of the subject as sold
                    ctx = Context(scene=ctx.scene, position=ctx.position, size=ctx.size, view=ctx.view,
                                  accessory=ctx.accessory if rng.random() < 0.3 else None)
                items.append(_Item(url=f"https://cdn.{sites[site]}.example.com/img/{p}/{u}-{n}.jpg",
                                   page_url=url, caption=_alt_text(rng, brand, noun, ctx, n), page_kind="shop",
                                   kind="subject", subject=subject, context=ctx, size=size,
                                   seed=rng.randrange(2**31)))
            boilerplate(site, url, "shop")
    for p in range(config.junk_pages):
        site = rng.randrange(config.sites)
        page_url = f"https://{sites[site]}.example.org/blog/{p}/{_brand(rng).lower()}-roundup"
        size = rng.choice(config.image_sizes)
        for n in range(rng.randint(lo, hi)):
            subject = training_subject(rng)
            ctx = random_context(rng, p_specified=0.6)
            noun = rng.choice(NOUNS[subject.cls])
            items.append(_Item(url=f"https://cdn.{sites[site]}.example.org/blog/{p}/{n}.jpg", page_url=page_url,
                               caption=rng.choice([prompt_for(noun, ctx), f"my favourite {noun}", "", "look at this"]),
                               page_kind="junk", kind="subject", subject=subject, context=ctx, size=size,
                               seed=rng.randrange(2**31)))
        boilerplate(site, page_url, "junk")
    for item in items:
        if item.kind == "subject" and rng.random() < config.broken_prob:
            item.kind, item.broken = "broken", rng.choice(["truncated", "html"])
    return items


def _image_bytes(item: _Item, quality: int) -> bytes:
    if item.kind == "boilerplate":
        image = render_boilerplate(item.boilerplate, item.size)
    else:
        image = render(item.subject, item.context, size=item.size, seed=item.seed, jitter=0.04)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    if item.broken == "truncated":
        return data[: len(data) // 3]
    if item.broken == "html":
        return b"<html><head><title>404 Not Found</title></head><body>not found</body></html>"
    return data


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: same config -> identical bytes
    tar.addfile(info, io.BytesIO(data))


def write_crawl(out_dir: str | os.PathLike, config: CrawlConfig | None = None, progress: bool = True) -> dict:
    """Write the crawl's shards and ground_truth.json under out_dir; returns the ground truth.

    Each shard is written atomically, so a rerun with the same config skips the shards it finds
    (resume) and a killed run never leaves a torn tar.
    """
    config = config or CrawlConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = plan_crawl(config)
    per = config.samples_per_shard
    truth: dict = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
                   "records": {}, "urls": {}, "subjects": {}}
    bar = tqdm(total=len(items), desc="rendering crawl", unit="img", disable=not progress)
    for shard in range(0, (len(items) + per - 1) // per):
        chunk = items[shard * per:(shard + 1) * per]
        keys = [f"{shard:05d}{i:04d}" for i in range(len(chunk))]
        for key, item in zip(keys, chunk):
            sid = item.subject.id if item.subject is not None else None
            truth["records"][key] = {"url": item.url, "page_url": item.page_url, "page_kind": item.page_kind,
                                     "kind": item.kind, "subject": sid, "broken": item.broken,
                                     "context": item.context.specified() if item.context else None}
            truth["urls"][item.url] = {"subject": sid if item.kind != "boilerplate" else None, "kind": item.kind,
                                       "page_kind": item.page_kind}
            if item.subject is not None:
                truth["subjects"][sid] = item.subject.to_dict()
        path = out / f"{shard:05d}.tar"
        if path.exists():
            bar.update(len(chunk))
            continue
        with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, item in zip(keys, chunk):
                data = _image_bytes(item, config.jpeg_quality)
                meta = {"url": item.url, "caption": item.caption, "page_url": item.page_url, "key": key,
                        "status": "success", "error_message": None, "width": item.size, "height": item.size}
                _add(tar, f"{key}.jpg", data)
                _add(tar, f"{key}.txt", item.caption.encode("utf-8"))
                _add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
                bar.update(1)
    bar.close()
    atomic_write_json(out / GROUND_TRUTH_FILE, truth)
    return truth


def read_ground_truth(crawl_dir_or_file: str | os.PathLike) -> dict:
    path = Path(crawl_dir_or_file)
    if path.is_dir():
        path = path / GROUND_TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no crawl ground truth at {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def subject_of_urls(truth: dict, urls: Iterable[str]) -> Subject | None:
    """The subject most of these image URLs show (None when none shows a subject): how a world expert
    for the dataset builder finds which subject a cluster of crawl images is, to render its targets."""
    votes = Counter(truth["urls"][u]["subject"] for u in urls
                    if u in truth["urls"] and truth["urls"][u]["kind"] == "subject")
    if not votes:
        return None
    return Subject.from_dict(truth["subjects"][votes.most_common(1)[0][0]])


# ----------------------------------------------------------------------------- scoring the builder
def score_cluster_assignments(clusters: dict[str, Iterable[str]], truth: dict, min_images: int = 3,
                              pure_threshold: float = 0.8) -> dict:
    """Purity and recall of clusters (cluster id -> image URLs) against the crawl's true subjects.

    - purity: per cluster, the share of its images showing its majority subject (a logo or banner
      counts as its own non-subject label); `purity` is the image-weighted mean,
      `pure_cluster_fraction` the share of clusters at >= pure_threshold.
    - recall: the share of true subjects with >= min_images clean images on shop pages that are the
      majority subject of at least one cluster of purity >= pure_threshold.
    URLs unknown to the ground truth are counted, not scored.
    """
    urls = truth["urls"]
    eligible = Counter()
    for rec in truth["records"].values():
        if rec["kind"] == "subject" and rec["page_kind"] == "shop":
            eligible[rec["subject"]] += 1
    eligible_subjects = {s for s, n in eligible.items() if n >= min_images}
    unknown, total_images, weighted = 0, 0, 0.0
    per_cluster = {}
    found: set[str] = set()
    pure = 0
    for cid, members in clusters.items():
        labels = []
        for url in dict.fromkeys(members):
            info = urls.get(url)
            if info is None:
                unknown += 1
                continue
            labels.append(info["subject"] if info["kind"] == "subject" else f"<{info['kind']}>")
        if not labels:
            continue
        majority, count = Counter(labels).most_common(1)[0]
        purity = count / len(labels)
        per_cluster[cid] = {"majority": majority, "purity": purity, "images": len(labels)}
        total_images += len(labels)
        weighted += purity * len(labels)
        if purity >= pure_threshold:
            pure += 1
            if majority in eligible_subjects:
                found.add(majority)
    n = len(per_cluster)
    return {"clusters": n, "images": total_images, "unknown_urls": unknown,
            "purity": weighted / total_images if total_images else 0.0,
            "pure_cluster_fraction": pure / n if n else 0.0,
            "subjects_eligible": len(eligible_subjects), "subjects_found": len(found),
            "recall": len(found) / len(eligible_subjects) if eligible_subjects else 0.0,
            "per_cluster": per_cluster}


def read_builder_clusters(shards: Iterable[str | os.PathLike]) -> dict[str, list[str]]:
    """cluster id -> source image URLs, from the builder's ICL shards (`{key}.json`: cluster_id, source_urls).
    A damaged shard is an error naming it: scores over a partly read output would mislead."""
    from retrieval.shards import iter_tar_samples

    def fail(problem):
        if problem.reason.startswith("member_") or problem.reason == "empty":
            return  # directories, links, hidden members or an empty shard hold no samples to score
        raise ValueError(f"cannot read builder shard {problem.shard}: {problem.reason} ({problem.detail})")

    clusters: dict[str, list[str]] = defaultdict(list)
    for shard in shards:
        for sample in iter_tar_samples(shard, fail):
            if "json" not in sample.members:
                continue
            try:
                meta = json.loads(sample.members["json"].decode("utf-8"))
                cid, sources = meta["cluster_id"], meta["source_urls"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{shard}: sample {sample.key} has no builder sample json ({exc})") from exc
            for url in sources:
                if url not in clusters[cid]:
                    clusters[cid].append(url)
    return dict(clusters)


def score_clusters(builder_shards: Iterable[str | os.PathLike], crawl_dir: str | os.PathLike, **kwargs) -> dict:
    """score_cluster_assignments over a builder's ICL shards and the crawl's ground_truth.json."""
    return score_cluster_assignments(read_builder_clusters(builder_shards), read_ground_truth(crawl_dir), **kwargs)


__all__ = ["CrawlConfig", "plan_crawl", "write_crawl", "read_ground_truth", "subject_of_urls", "score_cluster_assignments",
           "read_builder_clusters", "score_clusters", "GROUND_TRUTH_FILE"]
