"""Which header values are secret: never printed (logs, results, the API, errors, rejections),
stored only where sending needs them. No imports: the read side uses it too."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["is_secret", "shown_headers"]

_SECRET_NAMES = frozenset({"authorization", "proxy-authorization", "cookie"})
_SECRET_PARTS = ("token", "key", "secret")


def is_secret(name: str) -> bool:
    """Credentials, cookies, and any header whose name holds `token`, `key` or `secret`."""
    lowered = name.lower()
    return lowered in _SECRET_NAMES or any(part in lowered for part in _SECRET_PARTS)


def shown_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as they may be shown: a secret one's value as `***`."""
    return {name: "***" if is_secret(name) else value for name, value in headers}
