"""URL validation and the host key, with property tests for the numeric host forms."""

from __future__ import annotations

import ipaddress
import re

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fetcher.errors import InvalidURL
from fetcher.urls import (
    MAX_URL_LENGTH,
    join_redirect,
    normalize_host_key,
    parse_url,
    stored_target,
)


@pytest.mark.parametrize(
    ("raw", "url", "key"),
    [
        ("HTTP://Example.COM/a?b=1#frag", "http://example.com/a?b=1", "example.com"),
        ("https://example.com:443", "https://example.com/", "example.com"),
        ("http://example.com:8080/x", "http://example.com:8080/x", "example.com:8080"),
        ("http://Bücher.example/ä", "http://xn--bcher-kva.example/%C3%A4", "xn--bcher-kva.example"),
        ("http://[::1]:8443/", "http://[::1]:8443/", "[::1]:8443"),
        ("http://127.1/", "http://127.0.0.1/", "127.0.0.1"),
        ("http://2130706433/", "http://127.0.0.1/", "127.0.0.1"),
        ("http://0x7f000001/", "http://127.0.0.1/", "127.0.0.1"),
        ("http://0177.0.0.1/", "http://127.0.0.1/", "127.0.0.1"),
        ("http://example.com./", "http://example.com/", "example.com"),
        ("http://example.com/a/./b/../c?d=./..", "http://example.com/a/c?d=./..", "example.com"),
        ("http://example.com/a/..", "http://example.com/", "example.com"),
        ("http://example.com/a/.", "http://example.com/a/", "example.com"),
        ("http://example.com/../../x", "http://example.com/x", "example.com"),
        ("http://example.com//a/../b", "http://example.com//b", "example.com"),
    ],
)
def test_urls_are_normalised(raw: str, url: str, key: str) -> None:
    """Accepted URLs are stored in one canonical form, with the host key SPEC describes."""
    target = parse_url(raw)
    assert (target.url, target.host_key) == (url, key)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("ftp://example.com/", "scheme"),
        ("example.com/path", "scheme"),
        ("http:///path", "no host"),
        ("http://user:secret@example.com/", "credentials"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com/\nInjected: yes", "control"),
        ("http://example.com:99999/", "(?i)port"),
        ("http://[::1/", "malformed"),
        ("http://ex<ample.com/", "invalid host"),
        ("http://1.2.3.4.5/", "IPv4"),
        ("http://" + "a" * MAX_URL_LENGTH + ".com/", "longer"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(raw: str, reason: str) -> None:
    """Each refusal says why, in words a person can act on."""
    with pytest.raises(InvalidURL, match=reason):
        parse_url(raw)


@given(st.integers(0, 2**32 - 1), st.sampled_from(["dec", "hex", "oct", "short", "quad"]))
def test_every_numeric_ipv4_form_becomes_the_dotted_quad(value: int, form: str) -> None:
    """However an IPv4 address is written, the host key is its dotted quad."""
    address = ipaddress.IPv4Address(value)
    a, b, c, d = address.packed
    text = {
        "dec": str(value),
        "hex": hex(value),
        "oct": f"0{value:o}" if value else "0",
        "short": f"{a}.{(b << 16) | (c << 8) | d}",
        "quad": f"0x{a:x}.0{b:o}.{c}.0x{d:02x}",
    }[form]
    assert parse_url(f"http://{text}/").host == str(address)


@given(st.text(max_size=300))
def test_parse_url_never_fails_but_with_invalid_url(raw: str) -> None:
    """Whatever a line holds, validation answers with a URL or an InvalidURL, nothing else."""
    try:
        target = parse_url(raw)
    except InvalidURL:
        return
    assert target.url.startswith(("http://", "https://"))
    assert target.url.isprintable() and " " not in target.url


def test_host_keys_from_people_are_normalised() -> None:
    """Host keys written in a hosts file match the keys URLs get."""
    assert normalize_host_key("API.Example.com") == "api.example.com"
    assert normalize_host_key("127.0.0.2:8080") == "127.0.0.2:8080"
    assert normalize_host_key("bücher.example") == "xn--bcher-kva.example"


@given(
    st.sampled_from(["http", "https"]),
    st.sampled_from(["example.com", "127.0.0.2", "[::1]", "xn--bcher-kva.example"]),
    st.one_of(st.none(), st.integers(1, 65535)),
)
def test_stored_target_rebuilds_what_parse_url_made(
    scheme: str, host: str, port: int | None
) -> None:
    """The queue rebuilds a Target from (url, host key) exactly as parse_url made it."""
    target = parse_url(f"{scheme}://{host}{'' if port is None else f':{port}'}/p?q=1")
    assert stored_target(target.url, target.host_key) == target


_URLISH = st.text(alphabet="hHtTpPsS:/.?#%@0123456789abcxyzXYZ-_~=&+[]é ", max_size=40)


@given(st.one_of(_URLISH, st.builds(lambda a, b: f"http://{a}/{b}", _URLISH, _URLISH)))
@example("HTTP://Example.COM:80/a?b=1")
@example("https://a-b.example:8443/x/y?")
@example("http://h.example:0/")
@example("http://-bad.example/")
@example("http://127.0.0.2:8080/x")
@example("http://127.00.0.1/")
@example("http://1.2.3/")
@example("http://h.example/%zz;@:&")
def test_the_fast_path_agrees_with_the_full_parser(raw: str) -> None:
    """parse_url's shortcut for plain URLs gives exactly what the full parser gives."""
    from fetcher import urls

    def outcome(parse: object) -> object:
        try:
            return parse(raw)  # type: ignore[operator]
        except InvalidURL as exc:
            return ("invalid", exc.reason)

    plain = urls._PLAIN.fullmatch(raw)
    fast = urls._plain_target(*plain.groups()) if plain else None
    if fast is not None:
        saved = urls._PLAIN
        urls._PLAIN = re.compile(r"(?!)")  # the full path only
        try:
            assert outcome(urls.parse_url) == fast
        finally:
            urls._PLAIN = saved


_WIRE_CHARS = st.text(alphabet="/.?%:@!$&'()*+,;=-_~|^{}[]\\\"`<>aZ09éü\u4e2d", max_size=30)


@given(st.sampled_from(["http://h.example", "https://[::1]:8443", "http://127.1"]), _WIRE_CHARS)
@example("http://h.example", "/a/./b/../c")
@example("http://h.example", "/a/..")
@example("http://h.example", "/.")
@example("http://h.example", "/%zz/?q=%")
@example("http://h.example", "/?a=/../b")
def test_httpx_keeps_the_normal_form_as_it_is(base: str, rest: str) -> None:
    """The fetcher sends a stored URL without parsing it again (fetch.AiohttpTransport.get):
    that is only right if it is what httpx would have made of it."""
    try:
        target = parse_url(base + rest)
    except InvalidURL:
        return
    assert str(httpx.URL(target.url)) == target.url


_EDGE = "http://a.example/"
_ACCEPTED_AT_THE_EDGES = [
    # (raw, url, host_key, host, port); each also through the full parser (a non-ASCII path)
    ("http://a.example:1/", "http://a.example:1/", "a.example:1", "a.example", 1),
    ("http://a.example:65535/", "http://a.example:65535/", "a.example:65535", "a.example", 65535),
    ("HTTP://A.Example:80/x", "http://a.example/x", "a.example", "a.example", 80),
    ("https://a.example:443/", "https://a.example/", "a.example", "a.example", 443),
    ("https://a.example:80/", "https://a.example:80/", "a.example:80", "a.example", 80),
    ("http://a.example/?", "http://a.example/", "a.example", "a.example", 80),
    ("http://a.example/?a", "http://a.example/?a", "a.example", "a.example", 80),
    ("http://a.example/..", "http://a.example/", "a.example", "a.example", 80),
    ("http://a.example/a/b/..", "http://a.example/a/", "a.example", "a.example", 80),
    ("http://01234567/", "http://0.5.57.119/", "0.5.57.119", "0.5.57.119", 80),
    ("http://BÜCHER.example/", "http://xn--bcher-kva.example/", "xn--bcher-kva.example",
     "xn--bcher-kva.example", 80),
    (_EDGE + "x" * (MAX_URL_LENGTH - len(_EDGE) - 6) + "ü",
     _EDGE + "x" * (MAX_URL_LENGTH - len(_EDGE) - 6) + "%C3%BC", "a.example", "a.example", 80),
    ("http://1.2.3/", "http://1.2.0.3/", "1.2.0.3", "1.2.0.3", 80),
    ("http://1.2.65535/", "http://1.2.255.255/", "1.2.255.255", "1.2.255.255", 80),
    ("http://1.16777215/", "http://1.255.255.255/", "1.255.255.255", "1.255.255.255", 80),
    ("http://4294967295/", "http://255.255.255.255/", "255.255.255.255", "255.255.255.255", 80),
    ("http://255.255.255.255/", "http://255.255.255.255/", "255.255.255.255", "255.255.255.255",
     80),
    ("http://0x/", "http://0.0.0.0/", "0.0.0.0", "0.0.0.0", 80),
    ("http://0x7f.1/", "http://127.0.0.1/", "127.0.0.1", "127.0.0.1", 80),
    ("http://07.1.1.1/", "http://7.1.1.1/", "7.1.1.1", "7.1.1.1", 80),
    ("http://00/", "http://0.0.0.0/", "0.0.0.0", "0.0.0.0", 80),
    ("http://1.2.3.x/", "http://1.2.3.x/", "1.2.3.x", "1.2.3.x", 80),  # a name: ends in one
    ("http://a_b.example/", "http://a_b.example/", "a_b.example", "a_b.example", 80),
    ("http://[::ffff:1.2.3.4]:8080/", "http://[::ffff:102:304]:8080/", "[::ffff:102:304]:8080",
     "::ffff:102:304", 8080),
    ("http://bücher.example/", "http://xn--bcher-kva.example/", "xn--bcher-kva.example",
     "xn--bcher-kva.example", 80),
    (_EDGE + "x" * (MAX_URL_LENGTH - len(_EDGE)), _EDGE + "x" * (MAX_URL_LENGTH - len(_EDGE)),
     "a.example", "a.example", 80),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "url", "key", "host", "port"), _ACCEPTED_AT_THE_EDGES)
def test_accepted_at_the_edges(raw: str, url: str, key: str, host: str, port: int) -> None:
    """The last port, the last number of each IPv4 form, the longest URL: accepted, and
    every part of the target as it should be, by the fast path and by the full parser."""
    assert parse_url(raw) == (url, key, host, port, url.partition(":")[0])
    if len(raw) < MAX_URL_LENGTH:
        slow = parse_url(raw + "ü" if raw.endswith("/") else raw)  # not plain: full path
        assert (slow.host_key, slow.host, slow.port) == (key, host, port)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("http://a.example:0/", "port out of range: 0"),
        ("http://a.example:0/ü", "port out of range: 0"),
        ("http://a.example:65536/", "malformed: Port out of range 0-65535"),
        ("http://1.2.3.256/", "invalid IPv4 address: '1.2.3.256'"),
        ("http://256.1.1.1/", "invalid IPv4 address: '256.1.1.1'"),
        ("http://1.2.65536/", "invalid IPv4 address: '1.2.65536'"),
        ("http://1.16777216/", "invalid IPv4 address: '1.16777216'"),
        ("http://4294967296/", "invalid IPv4 address: '4294967296'"),
        ("http://1.2.3.4.5/", "invalid IPv4 address: '1.2.3.4.5'"),
        ("http://08.1.1.1/", "invalid IPv4 address: '08.1.1.1'"),
        ("http://1.x.3/", "invalid IPv4 address: '1.x.3'"),
        ("http://x.1/", "invalid IPv4 address: 'x.1'"),
        ("ftp://a.example/", "scheme must be http or https (got 'ftp')"),
        ("//a.example/", "scheme must be http or https (got 'none')"),
        ("http://u:p@a.example/", "credentials in URLs are not accepted"),
        ("http://@a.example/", "credentials in URLs are not accepted"),
        ("http:///x", "no host"),
        ("http://a..b/", "invalid host name: 'a..b'"),
        ("http://-a.example/", "invalid host name: '-a.example'"),
        ("http://[v1.x]/", "invalid IPv6 address: 'v1.x'"),
        (
            "http://[fe80::1%eth0]/",
            "invalid IPv6 address: 'fe80::1%eth0' (zone identifiers are refused)",
        ),
        ("http://[::1]x/", "malformed: '[::1]x' (after an IPv6 address only a port may follow)"),
        ("http://xn--ls8h.example\u00ad/", "invalid international host name: "),
        ("http://a b/", "contains whitespace or control characters"),
        ("http://a.example/\x7f", "contains whitespace or control characters"),
        (
            _EDGE + "x" * (MAX_URL_LENGTH - len(_EDGE) + 1),
            f"longer than {MAX_URL_LENGTH} characters",
        ),
        (_EDGE + "ü" * 1400, f"longer than {MAX_URL_LENGTH} characters once normalised"),
    ],
)
def test_refused_at_the_edges_with_the_exact_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidURL) as refused:
        parse_url(raw)
    assert str(refused.value).startswith(reason), str(refused.value)
    if not reason.endswith((": ", "are")):
        assert str(refused.value) == reason


def test_a_redirect_is_joined_to_its_base_and_stored_targets_split_their_keys() -> None:
    assert join_redirect("http://a.example/x/y", "  ../z  ").url == "http://a.example/z"
    assert stored_target("http://[::1]:8080/x", "[::1]:8080") == (
        "http://[::1]:8080/x", "[::1]:8080", "::1", 8080, "http",
    )  # fmt: skip
    assert stored_target("https://a.example/", "a.example").port == 443
    assert normalize_host_key("A.Example:80") == "a.example"
    assert normalize_host_key("[::1]:80") == "[::1]"
    assert normalize_host_key("a.example:8080") == "a.example:8080"
