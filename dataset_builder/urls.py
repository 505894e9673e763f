"""Page-URL normalisation, so the images of one page group together however the crawler spelled its URL.

Rules, in order (each has a test in tests/dataset_builder/test_urls.py):
- surrounding whitespace is stripped; a URL without a scheme ("example.com/a", "//example.com/a") gets http;
- scheme and host are lower-cased; the host is IDNA-encoded and loses a trailing dot and any user:password@;
- http and https are the same page (both become https) unless `merge_http_https=False`;
- a leading "www." is dropped unless `strip_www=False`;
- default ports go (:80 for http, :443 for https); other ports stay;
- the fragment goes (including "#!" fragments);
- tracking parameters go: any name starting with "utm_", and TRACKING_PARAMS (fbclid, gclid, ...);
  the remaining parameters are sorted by name (stable for repeated names); an empty query goes;
- the path: "." and ".." segments are resolved, repeated slashes collapse, percent-escapes are upper-cased and
  escapes of unreserved characters are decoded ("%7e" -> "~"), a final index file (INDEX_FILES) goes,
  and a trailing slash goes (the root stays "/"). Path case is kept: paths are case-sensitive.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

TRACKING_PARAMS = frozenset({
    "fbclid", "gclid", "gclsrc", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid", "ttclid", "igshid",
    "mc_cid", "mc_eid", "_ga", "_gl", "_hsenc", "_hsmi", "mkt_tok", "oly_anon_id", "oly_enc_id", "vero_id",
    "wickedid", "rb_clickid", "s_cid", "srsltid", "spm", "share_source",
})
INDEX_FILES = frozenset({
    "index.html", "index.htm", "index.php", "index.asp", "index.aspx", "index.shtml", "index.jsp",
    "default.html", "default.htm", "default.asp", "default.aspx",
})
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = re.compile(r"%(2[Dd]|2[Ee]|5[Ff]|7[Ee]|3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa])")
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")


class URLError(ValueError):
    """A page URL that cannot be normalised (empty, no host, bad port)."""


def _normalise_escapes(text: str) -> str:
    text = _ESCAPE.sub(lambda m: m.group(0).upper(), text)
    return _UNRESERVED.sub(lambda m: chr(int(m.group(1), 16)), text)


def _normalise_path(path: str) -> str:
    path = _normalise_escapes(path)
    # Characters that must be escaped (spaces, non-ASCII) are escaped once, existing escapes are kept.
    path = quote(path, safe="/%:@!$&'()*+,;=-._~")
    out: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    if out and out[-1].lower() in INDEX_FILES:
        out.pop()
    return "/" + "/".join(out)


def _is_tracking(name: str) -> bool:
    low = name.lower()
    return low.startswith("utm_") or low in TRACKING_PARAMS


def normalize_page_url(url: str, *, merge_http_https: bool = True, strip_www: bool = True) -> str:
    """Canonical form of a page URL (see module docstring). Raises URLError naming the URL when it has no host."""
    if url is None or not str(url).strip():
        raise URLError(f"empty page URL: {url!r}")
    raw = str(url).strip()
    if raw.startswith("//"):
        raw = "http:" + raw
    elif not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", raw):
        raw = "http://" + raw
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if merge_http_https and scheme == "http":
        scheme = "https"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise URLError(f"page URL has no host: {url!r}")
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        host = host.lower()
    if strip_www and host.startswith("www.") and host.count(".") >= 2:
        host = host[4:]
    try:
        port = parts.port
    except ValueError as e:
        raise URLError(f"page URL has a bad port: {url!r}") from e
    original_scheme = parts.scheme.lower()
    if port is not None and port != DEFAULT_PORTS.get(original_scheme) and port != DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = _normalise_path(parts.path)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_tracking(k)]
    params.sort(key=lambda kv: kv[0])
    query = urlencode(params, quote_via=quote, safe="/:@!$'()*+,;-._~")
    return urlunsplit((scheme, host, path, query, ""))
