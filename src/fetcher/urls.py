"""URL validation and the host key.

A URL is accepted when it is http(s), has a host, carries no credentials, whitespace or control
characters, and fits in `MAX_URL_LENGTH`. It is stored normalised: scheme and host lower-case,
the host IDNA-encoded, numeric IPv4 hosts in any form (`127.1`, `2130706433`, `0x7f000001`,
`0177.0.0.1`) rewritten as a dotted quad the way browsers parse them (WHATWG URL, IPv4 parser),
IPv6 compressed, the default port dropped, the fragment dropped, `.` and `..` path segments
resolved (RFC 3986, 5.2.4), non-ASCII path bytes escaped. The normal form is one httpx keeps
as it is, so it can go on the wire without being parsed again.
The host key is the host plus `:port` when the port is not the scheme's default.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple
from urllib.parse import quote, urljoin, urlsplit

import idna

from fetcher.errors import InvalidURL

__all__ = [
    "MAX_URL_LENGTH",
    "Target",
    "join_redirect",
    "normalize_host_key",
    "parse_url",
    "stored_target",
]

MAX_URL_LENGTH = 4096
_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]")
_ASCII_HOST = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_.])?")
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
# The common case, already in normal form but for case: parse_url's answer without urlsplit,
# IDNA or quoting. Anything else (numeric hosts included) takes the full path.
_PLAIN = re.compile(
    r"(https?)://([a-z0-9-]+(?:\.[a-z0-9-]+)*)(?::([0-9]{1,5}))?"
    r"(/[A-Za-z0-9/%:@!$&'()*+,;=._~-]*)?(\?[A-Za-z0-9/?%:@!$&'()*+,;=._~-]*)?",
    re.IGNORECASE,
)
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_QUERY_SAFE = _PATH_SAFE + "?"
_BRACKETED_NETLOC = re.compile(r"\[[^\]]*\](?::[0-9]*)?")


class Target(NamedTuple):
    """A validated URL: what is fetched, and the host key its counters and limits use. (A
    named tuple: immutable like a frozen dataclass, and made in C, which a million-URL submit
    and every claimed job notice.)"""

    url: str
    host_key: str
    host: str  # as connected to: IDNA name, dotted quad, or IPv6 without brackets
    port: int
    scheme: str


def parse_url(raw: str) -> Target:
    """Validate and normalise `raw`; `InvalidURL` says why it is refused."""
    plain = _PLAIN.fullmatch(raw) if len(raw) <= MAX_URL_LENGTH else None
    if plain is not None:
        target = _plain_target(*plain.groups())
        if target is not None:
            return target
    if len(raw) > MAX_URL_LENGTH:
        raise InvalidURL(f"longer than {MAX_URL_LENGTH} characters")
    if _FORBIDDEN.search(raw):
        raise InvalidURL("contains whitespace or control characters")
    try:
        parts = urlsplit(raw)
        port_text = parts.port
    except ValueError as exc:
        raise InvalidURL(f"malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidURL(f"scheme must be http or https (got {scheme or 'none'!r})")
    netloc = parts.netloc
    if "@" in netloc:
        raise InvalidURL("credentials in URLs are not accepted")
    bracketed = netloc.startswith("[")
    if bracketed and not _BRACKETED_NETLOC.fullmatch(netloc):
        raise InvalidURL(f"malformed: {netloc!r} (after an IPv6 address only a port may follow)")
    host = _normalize_host(parts.hostname or "", bracketed=bracketed)
    port = port_text if port_text is not None else _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise InvalidURL(f"port out of range: {port}")
    shown = f"[{host}]" if ":" in host else host
    key = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    path = _without_dot_segments(quote(parts.path, safe=_PATH_SAFE) or "/")
    query = "?" + quote(parts.query, safe=_QUERY_SAFE) if parts.query else ""
    url = f"{scheme}://{key}{path}{query}"
    if len(url) > MAX_URL_LENGTH:
        raise InvalidURL(f"longer than {MAX_URL_LENGTH} characters once normalised")
    return Target(url, key, host, port, scheme)


def _plain_target(
    scheme: str, host: str, port_text: str | None, path: str | None, query: str | None
) -> Target | None:
    scheme, host = scheme.lower(), host.lower()
    if _NUMERIC_LABEL.fullmatch(host.rpartition(".")[2]):
        if not _DOTTED_QUAD.fullmatch(host):
            return None  # other numeric forms: the WHATWG parser rewrites them
    elif not _ASCII_HOST.fullmatch(host):
        return None
    default = _DEFAULT_PORTS[scheme]
    port = int(port_text) if port_text else default
    if not 0 < port < 65536:
        return None
    key = host if port == default else f"{host}:{port}"
    path = _without_dot_segments(path) if path else "/"
    url = f"{scheme}://{key}{path}{query if query and len(query) > 1 else ''}"
    return Target(url, key, host, port, scheme)


def stored_target(url: str, host_key: str) -> Target:
    """The Target of a URL `parse_url` already normalised (as the queue stores it), rebuilt
    without validating it again."""
    scheme = url[: url.index(":")]
    if host_key.startswith("["):
        end = host_key.index("]")
        host, port_text = host_key[1:end], host_key[end + 2 :]
    else:
        host, _, port_text = host_key.partition(":")
    port = int(port_text) if port_text else _DEFAULT_PORTS[scheme]
    return Target(url, host_key, host, port, scheme)


def join_redirect(base: str, location: str) -> Target:
    """The target of a redirect: `location` resolved against `base`, validated like a submit."""
    return parse_url(urljoin(base, location.strip()))


def normalize_host_key(key: str) -> str:
    """The canonical form of a host key as written by a person (hosts file, `--host`)."""
    return parse_url(f"http://{key}/").host_key  # the default port, :80, is dropped there


def _without_dot_segments(path: str) -> str:
    """`path` (starting with "/") with its `.` and `..` segments resolved, as RFC 3986 5.2.4
    and browsers do: `/a/./b/../c` → `/a/c`, `/a/..` → `/`, `/..` → `/`."""
    if "/." not in path:
        return path
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    if segments[-1] in (".", ".."):
        kept.append("")  # the path still ends with a slash
    return "/" + "/".join(kept)


def _normalize_host(host: str, *, bracketed: bool) -> str:
    if not host:
        raise InvalidURL("no host")
    if bracketed:
        if "%" in host:  # a zone names an interface of the machine the URL was written on
            raise InvalidURL(f"invalid IPv6 address: {host!r} (zone identifiers are refused)")
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise InvalidURL(f"invalid IPv6 address: {host!r}") from None
    host = host.removesuffix(".")
    if host.isascii():
        host = host.lower()
    else:
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidURL(f"invalid international host name: {exc}") from None
    ipv4 = _parse_ipv4(host)
    if ipv4 is not None:
        return ipv4
    if not _ASCII_HOST.fullmatch(host) or ".." in host:
        raise InvalidURL(f"invalid host name: {host!r}")
    return host


def _parse_ipv4(host: str) -> str | None:
    """WHATWG's IPv4 parser: `None` when the host is a name, the dotted quad when it is a
    number in any of the forms resolvers accept, `InvalidURL` when it looks numeric but is not."""
    parts = host.split(".")
    if not _IPV4_PART.fullmatch(parts[-1]):
        return None
    if len(parts) > 4:
        raise InvalidURL(f"invalid IPv4 address: {host!r}")
    numbers = []
    for part in parts:
        if not _IPV4_PART.fullmatch(part):
            raise InvalidURL(f"invalid IPv4 address: {host!r}")
        if part[:2].lower() == "0x":
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not set(part) <= set("01234567"):
                raise InvalidURL(f"invalid IPv4 address: {host!r}")
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise InvalidURL(f"invalid IPv4 address: {host!r}")
    value = last
    for index, n in enumerate(head):
        value += n << (8 * (3 - index))
    return str(ipaddress.IPv4Address(value))
