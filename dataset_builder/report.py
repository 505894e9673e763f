"""Run outputs for people: stats.json (counts per stage and drop reason), manifest.json, contact_sheet.html."""
from __future__ import annotations

import base64
import html
import io

from PIL import Image

from .counts import Counts
from .urls import is_web_url


def thumbnail_uri(image, size: int) -> str:
    """A small JPEG data URI from JPEG bytes or a PIL image, so the contact sheet is one self-contained file."""
    im = Image.open(io.BytesIO(image)) if isinstance(image, (bytes, bytearray)) else image
    if getattr(im, "format", None) == "JPEG":
        im.draft("RGB", (size * 2, size * 2))
    im = im.convert("RGB")
    im.thumbnail((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def derived_rates(counts: Counts) -> dict:
    def rate(a, b):
        return round(counts[a] / counts[b], 6) if counts[b] else None
    return {
        "decode_keep_rate": rate("decode.out", "decode.in"),
        "target_keep_rate": rate("expert.kept", "expert.rendered"),
        "records_to_samples": rate("write.samples", "read.records"),
        "cluster_keep_rate": rate("write.clusters", "group.pages"),
    }


def build_stats(counts: Counts, extra: dict) -> dict:
    return {"counts": counts.nested(), "rates": derived_rates(counts), **extra}


def _fmt(x):
    return "-" if x is None else f"{x:.3f}"


def _link(url) -> str:
    """An anchor only for http(s) URLs (never javascript:/data: hrefs); the text is always escaped."""
    text = html.escape(str(url or ""))
    return f"<a href='{html.escape(str(url).strip())}'>{text}</a>" if is_web_url(url) else text


def _img(src) -> str:
    return f"<img src='{html.escape(str(src))}'>"


def contact_sheet_html(kept: list[dict], rejected: list[dict], stats: dict) -> str:
    """kept/rejected: cluster summaries with thumbnail data URIs (see local.cluster_summary)."""
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ICL dataset contact sheet</title><style>",
             "body{font-family:sans-serif;margin:16px} .c{border:1px solid #ccc;margin:8px 0;padding:8px}",
             ".row{display:flex;flex-wrap:wrap;gap:6px} figure{margin:0;font-size:11px;width:110px}",
             "img{display:block} .rej{opacity:.45} .bad{color:#b00} h3{margin:2px 0;font-size:14px}",
             "</style></head><body><h1>ICL dataset contact sheet</h1>"]
    rates = stats.get("rates", {})
    parts.append("<p>" + " &middot; ".join(f"{e(k)}: {e(str(v))}" for k, v in rates.items()) + "</p>")
    parts.append(f"<h2>Kept clusters (sample of {len(kept)})</h2>")
    for c in kept:
        parts.append(f"<div class='c'><h3>{e(c['cluster_id'])} &middot; {_link(c['page_url'])}</h3>"
                     f"<div>subject: <b>{e(str(c.get('subject') or ''))}</b> &middot; "
                     f"mean similarity {_fmt(c.get('mean_similarity'))} &middot; {e(str(c.get('n_members')))} "
                     f"members</div><div class='row'>")
        for x in c.get("exemplars", []):
            parts.append(f"<figure>{_img(x['thumb'])}<figcaption>exemplar &middot; sim "
                         f"{_fmt(x.get('centroid_similarity'))}<br>{e(str(x.get('caption') or ''))}"
                         "</figcaption></figure>")
        for t in c.get("targets", []):
            cls = "" if t.get("kept") else " class='rej'"
            why = "" if t.get("kept") else f"<br><span class='bad'>{e(t.get('reject_reason') or '')}</span>"
            parts.append(f"<figure{cls}>{_img(t['thumb'])}<figcaption>{e(str(t.get('skill') or ''))}: "
                         f"{e(str(t.get('prompt') or ''))}<br>CLIP-T {_fmt(t.get('clip_t'))} CLIP-I "
                         f"{_fmt(t.get('clip_i'))}{why}</figcaption></figure>")
        parts.append("</div></div>")
    parts.append(f"<h2>Rejected clusters (sample of {len(rejected)})</h2>")
    for c in rejected:
        parts.append(f"<div class='c'><h3>{e(c['cluster_id'])} &middot; {_link(c['page_url'])}</h3>"
                     f"<div class='bad'>rejected: {e(c['reason'])} &middot; mean similarity "
                     f"{_fmt(c.get('mean_similarity'))}</div><div class='row'>")
        for x in c.get("members", []):
            parts.append(f"<figure>{_img(x['thumb'])}<figcaption>{e(str(x.get('caption') or ''))}</figcaption>"
                         "</figure>")
        parts.append("</div></div>")
    parts.append("</body></html>\n")
    return "".join(parts)
