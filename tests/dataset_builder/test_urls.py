import pytest

from dataset_builder.urls import URLError, normalize_page_url

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
    # no scheme, protocol-relative, whitespace
    ("example.com/a", "https://example.com/a"),
    ("//example.com/a", "https://example.com/a"),
    ("  https://example.com/a \n", "https://example.com/a"),
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


@pytest.mark.parametrize("bad", ["", "   ", None, "https://", "https:///path", "http://example.com:99999/"])
def test_bad_urls_raise_naming_the_url(bad):
    with pytest.raises(URLError):
        normalize_page_url(bad)
