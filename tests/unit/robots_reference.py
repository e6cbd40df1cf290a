"""The checks of Google's reference robots.txt parser (google/robotstxt, `robots_test.cc`, every
`IsUserAgentAllowed` of it), written down as data: a robots.txt, the crawler's product token, a
URL, and the verdict the reference gives. RFC 9309 is that parser's standard; fetcher reads
robots.txt as it does, with the exceptions named in `UNREACHABLE` and `RFC_DIFFERS` (each with
its reason), and `test_robots_reference.py` holds it to that.
"""

from __future__ import annotations

from typing import NamedTuple


class Check(NamedTuple):
    group: str  # the reference test it comes from
    robots: str
    agent: str
    url: str
    allowed: bool


FOO_DISALLOW = "user-agent: FooBot\ndisallow: /\n"
GROUPS = (
    "allow: /foo/bar/\n\nuser-agent: FooBot\ndisallow: /\nallow: /x/\nuser-agent: BarBot\n"
    "disallow: /\nallow: /y/\n\n\nallow: /w/\nuser-agent: BazBot\n\nuser-agent: FooBot\n"
    "allow: /z/\ndisallow: /\n"
)
CASES_UPPER = "USER-AGENT: FooBot\nALLOW: /x/\nDISALLOW: /\n"
CASES_LOWER = "user-agent: FooBot\nallow: /x/\ndisallow: /\n"
CASES_CAMEL = "uSeR-aGeNt: FooBot\nAlLoW: /x/\ndIsAlLoW: /\n"
AGENT_UPPER = "User-Agent: FOO BAR\nAllow: /x/\nDisallow: /\n"
AGENT_LOWER = "User-Agent: foo bar\nAllow: /x/\nDisallow: /\n"
AGENT_CAMEL = "User-Agent: FoO bAr\nAllow: /x/\nDisallow: /\n"
GLOBAL = "user-agent: *\nallow: /\nuser-agent: FooBot\ndisallow: /\n"
ONLY_SPECIFIC = (
    "user-agent: FooBot\nallow: /\nuser-agent: BarBot\ndisallow: /\n"
    "user-agent: BazBot\ndisallow: /\n"
)
FISH = "user-agent: FooBot\ndisallow: /\nallow: /fish\n"
FISH_STAR = "user-agent: FooBot\ndisallow: /\nallow: /fish*\n"
FISH_SLASH = "user-agent: FooBot\ndisallow: /\nallow: /fish/\n"
PHP = "user-agent: FooBot\ndisallow: /\nallow: /*.php\n"
PHP_END = "user-agent: FooBot\ndisallow: /\nallow: /*.php$\n"
FISH_PHP = "user-agent: FooBot\ndisallow: /\nallow: /fish*.php\n"
FIRST_SPACE = "User-Agent: *\nDisallow: /\nUser-Agent: Foo Bar\nAllow: /x/\nDisallow: /\n"
INDEX = "User-Agent: *\nAllow: /allowed-slash/index.html\nDisallow: /\n"
MAX_LINE = 2083 * 8  # the reference cuts a line there


def _long_lines() -> list[Check]:
    """GoogleOnly_LineTooLong: a rule longer than the reference reads is cut at 16,664 bytes."""
    disallow, allow = "disallow: ", "allow: "
    one = "/x/".ljust(MAX_LINE - len("/x/") - len(disallow) + 1, "a")
    robots_a = f"user-agent: FooBot\n{disallow}{one}/qux\n"
    width = MAX_LINE - len("/x/") - len(allow) + 1
    a, b = "/x/".ljust(width, "a"), "/x/".ljust(width, "b")
    robots_b = f"user-agent: FooBot\ndisallow: /\n{allow}{a}/qux\n{allow}{b}/qux\n"
    return [
        Check("LineTooLong", robots_a, "FooBot", "http://foo.bar/fux", True),
        Check("LineTooLong", robots_a, "FooBot", f"http://foo.bar{one}/fux", False),
        Check("LineTooLong", robots_b, "FooBot", "http://foo.bar/", False),
        Check("LineTooLong", robots_b, "FooBot", f"http://foo.bar{a}/qux", True),
        Check("LineTooLong", robots_b, "FooBot", f"http://foo.bar{b}/fux", True),
    ]


def _c(group: str, robots: str, agent: str, url: str, allowed: bool) -> Check:
    return Check(group, robots, agent, url, allowed)


XY = "http://foo.bar/x/y"
AB = "http://foo.bar/a/b"
PAGE = "http://foo.bar/x/page.html"

CHECKS: list[Check] = [
    # GoogleOnly_SystemTest
    _c("SystemTest", "", "FooBot", "", True),
    _c("SystemTest", FOO_DISALLOW, "", "", True),
    _c("SystemTest", FOO_DISALLOW, "FooBot", "", False),
    _c("SystemTest", "", "", "", True),
    # ID_LineSyntax_Line: a missing colon is read as if it were there
    _c("LineSyntax_Line", FOO_DISALLOW, "FooBot", XY, False),
    _c("LineSyntax_Line", "foo: FooBot\nbar: /\n", "FooBot", XY, True),
    _c("LineSyntax_Line", "user-agent FooBot\ndisallow /\n", "FooBot", XY, False),
    # ID_LineSyntax_Groups: rules outside groups are ignored; groups of one agent combine
    _c("LineSyntax_Groups", GROUPS, "FooBot", "http://foo.bar/x/b", True),
    _c("LineSyntax_Groups", GROUPS, "FooBot", "http://foo.bar/z/d", True),
    _c("LineSyntax_Groups", GROUPS, "FooBot", "http://foo.bar/y/c", False),
    _c("LineSyntax_Groups", GROUPS, "BarBot", "http://foo.bar/y/c", True),
    _c("LineSyntax_Groups", GROUPS, "BarBot", "http://foo.bar/w/a", True),
    _c("LineSyntax_Groups", GROUPS, "BarBot", "http://foo.bar/z/d", False),
    _c("LineSyntax_Groups", GROUPS, "BazBot", "http://foo.bar/z/d", True),
    _c("LineSyntax_Groups", GROUPS, "FooBot", "http://foo.bar/foo/bar/", False),
    _c("LineSyntax_Groups", GROUPS, "BarBot", "http://foo.bar/foo/bar/", False),
    _c("LineSyntax_Groups", GROUPS, "BazBot", "http://foo.bar/foo/bar/", False),
    # ID_REPLineNamesCaseInsensitive
    *[
        _c("LineNamesCaseInsensitive", robots, "FooBot", url, allowed)
        for url, allowed in ((XY, True), (AB, False))
        for robots in (CASES_UPPER, CASES_LOWER, CASES_CAMEL)
    ],
    # ID_UserAgentValueCaseInsensitive: `FOO BAR` is the agent `FOO`
    *[
        _c("UserAgentValueCaseInsensitive", robots, agent, url, allowed)
        for agent in ("Foo", "foo")
        for url, allowed in ((XY, True), (AB, False))
        for robots in (AGENT_UPPER, AGENT_LOWER, AGENT_CAMEL)
    ],
    # GoogleOnly_AcceptUserAgentUpToFirstSpace
    _c("UserAgentUpToFirstSpace", FIRST_SPACE, "Foo", XY, True),
    _c("UserAgentUpToFirstSpace", FIRST_SPACE, "Foo Bar", XY, False),
    # ID_GlobalGroups_Secondary
    _c("GlobalGroups_Secondary", "", "FooBot", XY, True),
    _c("GlobalGroups_Secondary", GLOBAL, "FooBot", XY, False),
    _c("GlobalGroups_Secondary", GLOBAL, "BarBot", XY, True),
    _c("GlobalGroups_Secondary", ONLY_SPECIFIC, "QuxBot", XY, True),
    # ID_AllowDisallow_Value_CaseSensitive
    _c("Value_CaseSensitive", "user-agent: FooBot\ndisallow: /x/\n", "FooBot", XY, False),
    _c("Value_CaseSensitive", "user-agent: FooBot\ndisallow: /X/\n", "FooBot", XY, True),
    # ID_LongestMatch
    _c("LongestMatch", "user-agent: FooBot\ndisallow: /x/page.html\nallow: /x/\n", "FooBot",
       PAGE, False),
    _c("LongestMatch", "user-agent: FooBot\nallow: /x/page.html\ndisallow: /x/\n", "FooBot",
       PAGE, True),
    _c("LongestMatch", "user-agent: FooBot\nallow: /x/page.html\ndisallow: /x/\n", "FooBot",
       "http://foo.bar/x/", False),
    _c("LongestMatch", "user-agent: FooBot\ndisallow: \nallow: \n", "FooBot", PAGE, True),
    _c("LongestMatch", "user-agent: FooBot\ndisallow: /\nallow: /\n", "FooBot", PAGE, True),
    _c("LongestMatch", "user-agent: FooBot\ndisallow: /x\nallow: /x/\n", "FooBot",
       "http://foo.bar/x", False),
    _c("LongestMatch", "user-agent: FooBot\ndisallow: /x\nallow: /x/\n", "FooBot",
       "http://foo.bar/x/", True),
    _c("LongestMatch", "user-agent: FooBot\ndisallow: /x/page.html\nallow: /x/page.html\n",
       "FooBot", PAGE, True),
    _c("LongestMatch", "user-agent: FooBot\nallow: /page\ndisallow: /*.html\n", "FooBot",
       "http://foo.bar/page.html", False),
    _c("LongestMatch", "user-agent: FooBot\nallow: /page\ndisallow: /*.html\n", "FooBot",
       "http://foo.bar/page", True),
    _c("LongestMatch", "user-agent: FooBot\nallow: /x/page.\ndisallow: /*.html\n", "FooBot",
       PAGE, True),
    _c("LongestMatch", "user-agent: FooBot\nallow: /x/page.\ndisallow: /*.html\n", "FooBot",
       "http://foo.bar/x/y.html", False),
    _c("LongestMatch", "User-agent: *\nDisallow: /x/\nUser-agent: FooBot\nDisallow: /y/\n",
       "FooBot", "http://foo.bar/x/page", True),
    _c("LongestMatch", "User-agent: *\nDisallow: /x/\nUser-agent: FooBot\nDisallow: /y/\n",
       "FooBot", "http://foo.bar/y/page", False),
    # ID_Encoding
    _c("Encoding", "User-agent: FooBot\nDisallow: /\n"
       "Allow: /foo/bar?qux=taz&baz=http://foo.bar?tar&par\n", "FooBot",
       "http://foo.bar/foo/bar?qux=taz&baz=http://foo.bar?tar&par", True),
    _c("Encoding", "User-agent: FooBot\nDisallow: /\nAllow: /foo/bar/ツ\n", "FooBot",
       "http://foo.bar/foo/bar/%E3%83%84", True),
    _c("Encoding", "User-agent: FooBot\nDisallow: /\nAllow: /foo/bar/ツ\n", "FooBot",
       "http://foo.bar/foo/bar/ツ", False),
    _c("Encoding", "User-agent: FooBot\nDisallow: /\nAllow: /foo/bar/%E3%83%84\n", "FooBot",
       "http://foo.bar/foo/bar/%E3%83%84", True),
    _c("Encoding", "User-agent: FooBot\nDisallow: /\nAllow: /foo/bar/%E3%83%84\n", "FooBot",
       "http://foo.bar/foo/bar/ツ", False),
    _c("Encoding", "User-agent: FooBot\nDisallow: /\nAllow: /foo/bar/%62%61%7A\n", "FooBot",
       "http://foo.bar/foo/bar/baz", False),
    _c("Encoding", "User-agent: FooBot\nDisallow: /\nAllow: /foo/bar/%62%61%7A\n", "FooBot",
       "http://foo.bar/foo/bar/%62%61%7A", True),
    # ID_SpecialCharacters: `*`, `$`, `#`
    *[
        _c("SpecialCharacters", "User-agent: FooBot\nDisallow: /foo/bar/quz\nAllow: /foo/*/qux\n",
           "FooBot", f"http://foo.bar/foo/{path}", allowed)
        for path, allowed in (("bar/quz", False), ("quz", True), ("/quz", True), ("bax/quz", True))
    ],
    *[
        _c("SpecialCharacters", "User-agent: FooBot\nDisallow: /foo/bar$\nAllow: /foo/bar/qux\n",
           "FooBot", f"http://foo.bar/foo/{path}", allowed)
        for path, allowed in (("bar", False), ("bar/qux", True), ("bar/", True), ("bar/baz", True))
    ],
    _c("SpecialCharacters", "User-agent: FooBot\n# Disallow: /\nDisallow: /foo/quz#qux\n"
       "Allow: /\n", "FooBot", "http://foo.bar/foo/bar", True),
    _c("SpecialCharacters", "User-agent: FooBot\n# Disallow: /\nDisallow: /foo/quz#qux\n"
       "Allow: /\n", "FooBot", "http://foo.bar/foo/quz", False),
    # GoogleOnly_IndexHTMLisDirectory
    _c("IndexHTMLisDirectory", INDEX, "foobot", "http://foo.com/allowed-slash/", True),
    _c("IndexHTMLisDirectory", INDEX, "foobot", "http://foo.com/allowed-slash/index.htm", False),
    _c("IndexHTMLisDirectory", INDEX, "foobot", "http://foo.com/allowed-slash/index.html", True),
    _c("IndexHTMLisDirectory", INDEX, "foobot", "http://foo.com/anyother-url", False),
    # GoogleOnly_LineTooLong
    *_long_lines(),
    # GoogleOnly_DocumentationChecks
    *[
        _c("DocumentationChecks", FISH, "FooBot", f"http://foo.bar/{path}", allowed)
        for path, allowed in (
            ("bar", False), ("fish", True), ("fish.html", True), ("fish/salmon.html", True),
            ("fishheads", True), ("fishheads/yummy.html", True), ("fish.html?id=anything", True),
            ("Fish.asp", False), ("catfish", False), ("?id=fish", False),
        )
    ],
    *[
        _c("DocumentationChecks", FISH_STAR, "FooBot", f"http://foo.bar/{path}", allowed)
        for path, allowed in (
            ("bar", False), ("fish", True), ("fish.html", True), ("fish/salmon.html", True),
            ("fishheads", True), ("fishheads/yummy.html", True), ("fish.html?id=anything", True),
            ("Fish.bar", False), ("catfish", False), ("?id=fish", False),
        )
    ],
    *[
        _c("DocumentationChecks", FISH_SLASH, "FooBot", f"http://foo.bar/{path}", allowed)
        for path, allowed in (
            ("bar", False), ("fish/", True), ("fish/salmon", True), ("fish/?salmon", True),
            ("fish/salmon.html", True), ("fish/?id=anything", True), ("fish", False),
            ("fish.html", False), ("Fish/Salmon.html", False),
        )
    ],
    *[
        _c("DocumentationChecks", PHP, "FooBot", f"http://foo.bar/{path}", allowed)
        for path, allowed in (
            ("bar", False), ("filename.php", True), ("folder/filename.php", True),
            ("folder/filename.php?parameters", True), ("/folder/any.php.file.html", True),
            ("filename.php/", True), ("index?f=filename.php/", True), ("php/", False),
            ("index?php", False), ("windows.PHP", False),
        )
    ],
    *[
        _c("DocumentationChecks", PHP_END, "FooBot", f"http://foo.bar/{path}", allowed)
        for path, allowed in (
            ("bar", False), ("filename.php", True), ("folder/filename.php", True),
            ("filename.php?parameters", False), ("filename.php/", False),
            ("filename.php5", False), ("php/", False), ("filename?php", False),
            ("aaaphpaaa", False), ("/windows.PHP", False),
        )
    ],
    *[
        _c("DocumentationChecks", FISH_PHP, "FooBot", f"http://foo.bar/{path}", allowed)
        for path, allowed in (
            ("bar", False), ("fish.php", True), ("fishheads/catfish.php?parameters", True),
            ("Fish.PHP", False),
        )
    ],
    _c("DocumentationChecks", "user-agent: FooBot\nallow: /p\ndisallow: /\n", "FooBot",
       "http://example.com/page", True),
    _c("DocumentationChecks", "user-agent: FooBot\nallow: /folder\ndisallow: /folder\n",
       "FooBot", "http://example.com/folder/page", True),
    _c("DocumentationChecks", "user-agent: FooBot\nallow: /page\ndisallow: /*.htm\n", "FooBot",
       "http://example.com/page.htm", False),
    _c("DocumentationChecks", "user-agent: FooBot\nallow: /$\ndisallow: /\n", "FooBot",
       "http://example.com/", True),
    _c("DocumentationChecks", "user-agent: FooBot\nallow: /$\ndisallow: /\n", "FooBot",
       "http://example.com/page.html", False),
]  # fmt: skip

# checks fetcher cannot be asked: (group, agent, url) → why
UNREACHABLE: dict[tuple[str, str, str], str] = {
    ("SystemTest", "FooBot", ""): "a job has a URL: an empty one is refused at submit",
    ("SystemTest", "", ""): "no product token: FETCHER_USER_AGENT without one exits 78",
    ("UserAgentUpToFirstSpace", "Foo Bar", XY): (
        "a product token has no space (RFC 9309 2.2.1): FETCHER_USER_AGENT='Foo Bar' names the"
        " product 'Foo', which this robots.txt's 'Foo Bar' group is for"
    ),
}

# checks where RFC 9309 asks for another answer than the reference gives: (group, URL) → why
RFC_DIFFERS: dict[tuple[str, str], str] = {
    ("Encoding", "http://foo.bar/foo/bar/ツ"): (
        "RFC 9309 2.2.2: octets outside US-ASCII are percent-encoded before comparison; fetcher"
        " sends and matches every URL percent-encoded (/foo/bar/%E3%83%84), so the rule for"
        " /foo/bar/ツ (or %E3%83%84) allows it"
    ),
    ("Encoding", "http://foo.bar/foo/bar/baz"): (
        "RFC 9309 2.2.2: a percent-encoded unreserved octet (%62%61%7A) is decoded before"
        " comparison, so /foo/bar/%62%61%7A is /foo/bar/baz"
    ),
}
LONG_LINE_REASON = (
    "the reference cuts a line at 16,664 bytes; this URL is longer than any fetcher accepts"
    " (4,096 characters), so no job can ask it"
)
