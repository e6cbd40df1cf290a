"""Errors fetcher raises on purpose, and the reasons a job can end with.

FetcherError
 ├── ConfigError        a wrong variable or hosts file: exit 78, the message names it
 ├── InvalidURL         refused at submit (or when a redirect names one)
 ├── InvalidJob         a job object refused at submit (a field named, a secret never shown)
 ├── IdempotencyKeyReused  an Idempotency-Key sent again with another request (422)
 ├── BodyNotKept        the body could not be written (disk full): fetcher's fault, not the
 │                      host's; the job tries again later without using up an attempt
 └── Refused            a job ends `failed` without (more) requests: reason stored in results
      ├── BlockedDestination
      └── BodyTooLarge
StoreUnavailable        the queue's database cannot be used for now (locked, full, away):
                        the daemon waits and tries again, it never drops what it holds
"""

from __future__ import annotations

__all__ = [
    "BlockedDestination",
    "BodyNotKept",
    "BodyTooLarge",
    "ConfigError",
    "FetcherError",
    "IdempotencyKeyReused",
    "InvalidJob",
    "InvalidURL",
    "Refused",
    "SchemaTooOld",
    "StoreUnavailable",
]


class FetcherError(Exception):
    """Something fetcher recognised and can explain in one line."""


class ConfigError(FetcherError):
    """The configuration is wrong; the message names the variable and why."""


class InvalidURL(FetcherError):
    """Not a URL fetcher will fetch."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidJob(FetcherError):
    """Not a job fetcher will queue: the reason names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IdempotencyKeyReused(FetcherError):
    """An Idempotency-Key already answered another request (within a day)."""


class BodyNotKept(FetcherError):
    """A response body could not be written to the body directory."""

    def __init__(self, exc: OSError) -> None:
        self.reason = f"body not kept: {exc.strerror or exc}"
        super().__init__(self.reason)


class Refused(FetcherError):
    """The job ends `failed` with this reason; retrying would not help."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BlockedDestination(Refused):
    """The destination address is not public and FETCHER_ALLOW_PRIVATE is off."""


class BodyTooLarge(Refused):
    """The decoded body grew past FETCHER_MAX_BODY_BYTES."""


class SchemaTooOld(FetcherError):
    """The database was written by an older fetcher and not migrated yet (the read commands
    never change it): any command that writes, or the daemon, migrates it."""

    def __init__(self, found: int, wanted: int) -> None:
        super().__init__(
            f"the database's schema is version {found}, this fetcher reads version {wanted}:"
            " start the daemon (or `fetcher submit`) once to migrate it"
        )


class StoreUnavailable(Exception):
    """The database refused an operation for a reason that passes (locked past the busy
    timeout, disk full, read-only, the server away). Raised by a backend in place of its
    driver's error; the daemon retries, a command reports it and exits 1."""

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"{operation}: {reason}")
        self.operation = operation
        self.reason = reason
