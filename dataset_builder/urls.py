"""Page-URL normalisation, so the images of one page group together however the crawler spelled its URL.

Rules, in order (each has a test in tests/dataset_builder/test_urls.py):
- surrounding whitespace is stripped; a URL without a scheme ("example.com/a", "//example.com/a") gets http;
- only http and https are web pages: any other scheme (ftp:, mailto:, javascript:, data:, file:) raises URLError;
- scheme and host are lower-cased; the host is IDNA-encoded and loses a trailing dot and any user:password@;
  an IPv6 host keeps its brackets and is written in its compressed form ("[::1]");
- http and https are the same page (both become https) unless `merge_http_https=False`;
- a leading "www." is dropped unless `strip_www=False`;
- default ports go (:80 for http, :443 for https); other ports stay;
- the fragment goes (including "#!" fragments);
- tracking parameters go: any name starting with "utm_", TRACKING_PARAMS (fbclid, gclid, ...) and session ids
  (SESSION_PARAMS: jsessionid, phpsessid, sessionid, ...), both as query parameters and as ";name=value" path
  parameters ("/a;jsessionid=XYZ" -> "/a"): a session id names a visit, not a page;
  the remaining parameters are sorted by name (stable for repeated names); an empty query goes;
- the path: "." and ".." segments are resolved, repeated slashes collapse, percent-escapes are upper-cased and
  escapes of unreserved characters are decoded ("%7e" -> "~"), a final index file (INDEX_FILES) goes,
  and a trailing slash goes (the root stays "/"). Path case is kept: paths are case-sensitive.
"""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

TRACKING_PARAMS = frozenset({
    "fbclid", "gclid", "gclsrc", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid", "ttclid", "igshid",
    "mc_cid", "mc_eid", "_ga", "_gl", "_hsenc", "_hsmi", "mkt_tok", "oly_anon_id", "oly_enc_id", "vero_id",
    "wickedid", "rb_clickid", "s_cid", "srsltid", "spm", "share_source",
})
SESSION_PARAMS = frozenset({
    "jsessionid", "phpsessid", "aspsessionid", "sessionid", "session_id", "sessid", "cfid", "cftoken",
})
INDEX_FILES = frozenset({
    "index.html", "index.htm", "index.php", "index.asp", "index.aspx", "index.shtml", "index.jsp",
    "default.html", "default.htm", "default.asp", "default.aspx",
})
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = re.compile(r"%(2[Dd]|2[Ee]|5[Ff]|7[Ee]|3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa])")
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")


class URLError(ValueError):
    """A page URL that cannot be normalised; `reason` is a short drop reason (decode counts it)."""

    def __init__(self, message: str, reason: str = "bad_page_url"):
        super().__init__(message)
        self.reason = reason


_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):(?!\d)")  # "host:8080/a" is a host and port, not a scheme


def _normalise_escapes(text: str) -> str:
    text = _ESCAPE.sub(lambda m: m.group(0).upper(), text)
    return _UNRESERVED.sub(lambda m: chr(int(m.group(1), 16)), text)


def _strip_session_params(segment: str) -> str:
    """'/a;jsessionid=X' style path parameters: drop the session ones, keep the rest in order."""
    name, *params = segment.split(";")
    return ";".join([name] + [p for p in params if p.split("=", 1)[0].lower() not in SESSION_PARAMS])


def _normalise_path(path: str) -> str:
    path = "/".join(_strip_session_params(seg) for seg in path.split("/")) if ";" in path else path
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
    return low.startswith("utm_") or low in TRACKING_PARAMS or low in SESSION_PARAMS


def _normalise_host(hostname: str, url) -> str:
    if ":" in hostname:  # IPv6 literal (urlsplit drops the brackets): canonical form, brackets back
        try:
            return f"[{ipaddress.IPv6Address(hostname).compressed}]"
        except ValueError:
            return f"[{hostname.lower()}]"  # e.g. with a zone id: kept as written
    host = hostname.rstrip(".")
    if not host:
        raise URLError(f"page URL has no host: {url!r}", "bad_page_url")
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return host.lower()


def normalize_page_url(url: str, *, merge_http_https: bool = True, strip_www: bool = True) -> str:
    """Canonical form of a page URL (see module docstring). Raises URLError naming the URL when it is not an
    http(s) URL with a host."""
    if url is None or not str(url).strip():
        raise URLError(f"empty page URL: {url!r}")
    raw = str(url).strip()
    m = _SCHEME.match(raw)
    if raw.startswith("//"):
        raw = "http:" + raw
    elif m is None:
        raw = "http://" + raw
    elif m.group(1).lower() not in DEFAULT_PORTS:
        raise URLError(f"page URL is not http(s): {url!r}", "unsupported_url_scheme")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as e:  # bad port, unbalanced IPv6 brackets
        raise URLError(f"page URL cannot be parsed ({e}): {url!r}") from e
    original_scheme = parts.scheme.lower()
    scheme = "https" if merge_http_https and original_scheme == "http" else original_scheme
    host = _normalise_host(parts.hostname or "", url)
    if strip_www and host.startswith("www.") and host.count(".") >= 2:
        host = host[4:]
    if port is not None and port != DEFAULT_PORTS.get(original_scheme) and port != DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = _normalise_path(parts.path)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_tracking(k)]
    params.sort(key=lambda kv: kv[0])
    query = urlencode(params, quote_via=quote, safe="/:@!$'()*+,;-._~")
    return urlunsplit((scheme, host, path, query, ""))


def is_web_url(url) -> bool:
    """True for an absolute http(s) URL with a host (safe to put in an href)."""
    try:
        parts = urlsplit(str(url).strip())
        return parts.scheme.lower() in DEFAULT_PORTS and bool(parts.netloc)
    except ValueError:
        return False
