import pytest

from dataset_builder.report import contact_sheet_html
from dataset_builder.urls import URLError, is_web_url, normalize_page_url

CASES = [
    # scheme and host case; http and https are one page
    ("HTTP://Example.COM/Item", "https://example.com/Item"),
    ("https://EXAMPLE.com/a", "https://example.com/a"),
    # default ports go, others stay
    ("http://example.com:80/a", "https://example.com/a"),
    ("https://example.com:443/a", "https://example.com/a"),
    ("https://example.com:8443/a", "https://example.com:8443/a"),
    # fragments go
    ("https://example.com/a#reviews", "https://example.com/a"),
    ("https://example.com/a#!/state", "https://example.com/a"),
    # tracking parameters go, the rest are sorted
    ("https://example.com/a?utm_source=x&utm_medium=y&utm_campaign=z", "https://example.com/a"),
    ("https://example.com/a?id=3&fbclid=abc", "https://example.com/a?id=3"),
    ("https://example.com/a?gclid=1&msclkid=2&mc_cid=3&_ga=4&id=7", "https://example.com/a?id=7"),
    ("https://example.com/a?UTM_Source=x&b=2&a=1", "https://example.com/a?a=1&b=2"),
    ("https://example.com/a?x=&y=1", "https://example.com/a?x=&y=1"),
    ("https://example.com/a?q=a%20b", "https://example.com/a?q=a%20b"),
    # trailing slash and index files go; the root stays "/"
    ("https://example.com/a/", "https://example.com/a"),
    ("https://example.com/a/index.html", "https://example.com/a"),
    ("https://example.com/a/INDEX.HTM", "https://example.com/a"),
    ("https://example.com/a/default.aspx", "https://example.com/a"),
    ("https://example.com/index.php", "https://example.com/"),
    ("https://example.com", "https://example.com/"),
    ("https://example.com/", "https://example.com/"),
    # dot segments, repeated slashes, escapes
    ("https://example.com/a/./b/../c", "https://example.com/a/c"),
    ("https://example.com//a///b", "https://example.com/a/b"),
    ("https://example.com/%7euser/%2fx", "https://example.com/~user/%2Fx"),
    ("https://example.com/caf\u00e9", "https://example.com/caf%C3%A9"),
    # path case is kept (paths are case-sensitive)
    ("https://example.com/Product/ABC", "https://example.com/Product/ABC"),
    # www., user info, trailing dot, IDNA
    ("https://www.example.com/a", "https://example.com/a"),
    ("https://user:pw@example.com/a", "https://example.com/a"),
    ("https://example.com./a", "https://example.com/a"),
    ("https://b\u00fccher.example/a", "https://xn--bcher-kva.example/a"),
    # no scheme, protocol-relative, whitespace; a host with a port is not a scheme
    ("example.com/a", "https://example.com/a"),
    ("//example.com/a", "https://example.com/a"),
    ("  https://example.com/a \n", "https://example.com/a"),
    ("localhost:8080/a", "https://localhost:8080/a"),
    ("example.com:80/a", "https://example.com/a"),
    # IPv6 hosts keep their brackets, in compressed form; IPv4 as is
    ("http://[::1]:8080/a", "https://[::1]:8080/a"),
    ("http://[::1]/a", "https://[::1]/a"),
    ("http://[0:0:0:0:0:0:0:1]:80/a", "https://[::1]/a"),
    ("HTTP://[2001:DB8::A]/x/", "https://[2001:db8::a]/x"),
    ("[::1]:8080/a", "https://[::1]:8080/a"),
    ("http://192.168.0.1:8080/a", "https://192.168.0.1:8080/a"),
    # session ids go, as query parameters and as ;path parameters
    ("https://example.com/a?JSESSIONID=abc&id=2", "https://example.com/a?id=2"),
    ("https://example.com/a?PHPSESSID=1&sessionid=2&session_id=3", "https://example.com/a"),
    ("https://example.com/item;jsessionid=0A1B2C?id=2", "https://example.com/item?id=2"),
    ("https://example.com/shop;jsessionid=0A1B/item", "https://example.com/shop/item"),
    ("https://example.com/a;v=2;JSESSIONID=x", "https://example.com/a;v=2"),
    ("https://example.com/a;v=2", "https://example.com/a;v=2"),
]


@pytest.mark.parametrize("url,expected", CASES)
def test_normalize_page_url(url, expected):
    assert normalize_page_url(url) == expected


def test_options_keep_scheme_and_www():
    assert normalize_page_url("http://www.example.com/a", merge_http_https=False, strip_www=False) == \
        "http://www.example.com/a"


def test_www_alone_is_not_stripped_to_a_tld():
    assert normalize_page_url("https://www.com/a") == "https://www.com/a"


def test_spellings_of_one_page_agree():
    spellings = ["https://shop.example.com/item/zorb", "HTTP://SHOP.EXAMPLE.COM:80/item/zorb/",
                 "https://www.shop.example.com/item/zorb?utm_source=news", "https://shop.example.com/item/zorb#x",
                 "https://shop.example.com/item/./zorb/index.html", "https://shop.example.com/item/zorb?fbclid=1"]
    assert len({normalize_page_url(u) for u in spellings}) == 1


def test_different_pages_stay_different():
    assert normalize_page_url("https://example.com/a?id=1") != normalize_page_url("https://example.com/a?id=2")
    assert normalize_page_url("https://example.com/A") != normalize_page_url("https://example.com/a")


@pytest.mark.parametrize("bad", ["", "   ", None, "https://", "https:///path", "http://example.com:99999/",
                                 "http://[::1/a"])
def test_bad_urls_raise_naming_the_url(bad):
    with pytest.raises(URLError) as e:
        normalize_page_url(bad)
    assert e.value.reason == "bad_page_url" and repr(bad) in str(e.value)


@pytest.mark.parametrize("url", ["ftp://example.com/a", "mailto:someone@example.com", "javascript:alert(1)",
                                 "data:text/html;base64,PGgxPg==", "file:///etc/passwd", "FTP://example.com/",
                                 "ws://example.com/chat"])
def test_only_http_and_https_are_pages(url):
    with pytest.raises(URLError, match="not http") as e:
        normalize_page_url(url)
    assert e.value.reason == "unsupported_url_scheme"


def test_decode_counts_non_web_page_urls_with_their_reason():
    from dataset_builder.config import DecodeConfig, GroupConfig
    from dataset_builder.counts import Counts
    from dataset_builder.decode import decode_batch
    from dataset_builder.records import RawRecord
    from dataset_builder.testing import jpeg_bytes, subject_image
    img = jpeg_bytes(subject_image("zorb", 0))
    raws = [RawRecord(key=str(i), source="t", page_url=u, image_url="i", text="", image_bytes=img)
            for i, u in enumerate(["javascript:void(0)", "ftp://e.com/a", "http://[::1", "http://[::1]:8080/a"])]
    counts = Counts()
    out = decode_batch(raws, DecodeConfig(), GroupConfig(), counts)
    assert [r.page_key for r in out] == ["https://[::1]:8080/a"]
    assert counts["decode.dropped.unsupported_url_scheme"] == 2 and counts["decode.dropped.bad_page_url"] == 1


def test_is_web_url():
    assert is_web_url("https://example.com/a") and is_web_url(" HTTP://[::1]:8080/ ")
    for url in ["javascript:alert(1)", "data:text/html,x", "//example.com", "example.com/a", "https://", None,
                "http://[::1"]:
        assert not is_web_url(url)


def test_contact_sheet_links_only_web_urls_and_escapes_everything():
    evil = {"cluster_id": "<b>c</b>", "page_url": "javascript:alert('x')", "subject": "<script>s</script>",
            "mean_similarity": 0.5, "n_members": "<i>3</i>",
            "exemplars": [{"thumb": "data:image/jpeg;base64,AAAA' onerror='alert(1)", "caption": "<img src=x>",
                           "centroid_similarity": 0.9}],
            "targets": [{"thumb": "data:image/jpeg;base64,BBBB", "prompt": "a \"quote\" & <tag>", "skill": "s",
                         "clip_t": None, "clip_i": None, "kept": False, "reject_reason": "<why>"}]}
    good = dict(evil, cluster_id="good", page_url="https://example.com/a?b=1&c='2'")
    rejected = [{"cluster_id": "r", "page_url": "https://[::1]:8080/p", "reason": "<incoherent>",
                 "mean_similarity": None, "members": [{"thumb": "data:x", "caption": None}]}]
    out = contact_sheet_html([evil, good], rejected, {"rates": {"<k>": "<v>"}})
    assert "<a " not in out.split("<h3>")[1].split("</h3>")[0]  # the javascript: page gets no anchor
    assert "href='javascript" not in out and "<script>" not in out and "<img src=x>" not in out
    assert "<i>3</i>" not in out and "<why>" not in out and "<incoherent>" not in out and "<k>" not in out
    assert "onerror='" not in out  # the quote that would end the src attribute is escaped
    assert "href='https://example.com/a?b=1&amp;c=&#x27;2&#x27;'" in out
    assert "href='https://[::1]:8080/p'" in out
    assert "&lt;script&gt;" in out and "javascript:alert(&#x27;x&#x27;)" in out  # shown as text, not linked
