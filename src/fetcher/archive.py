"""The body directory as readers see it: WARC files by name, a body by its result's `body_path`,
retention by whole files, and the repair of a file a killed daemon left torn. No asyncio and no
settings: `fetcher body` and `fetcher warc` are read commands.

    <FETCHER_BODY_DIR>/fetcher-<UTC time>-<serial>-<machine>-<pid>.warc[.gz]
    <name>.open          beside a file while its daemon appends to it
    ab/abcdef…           a body of the layout before WARC, named by its sha256

A `body_path` is `FILE#OFFSET` (the record's), or a path relative to the directory for a body
of the old layout: served until retention removes it.
"""

from __future__ import annotations

import collections
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fetcher import warc
from fetcher.daemons import process_alive, this_machine
from fetcher.log import get_logger

_log = get_logger("fetcher.archive")

__all__ = [
    "OPEN", "WarcFile", "count_records", "file_name", "is_gzipped", "is_legacy", "label",
    "parse_name", "read_body", "remove_expired", "repair", "warc_files",
]  # fmt: skip

OPEN = ".open"
_NAME = re.compile(r"^fetcher-(\d{17})-(\d{5})-(.+)-(\d+)\.warc(\.gz)?$")


@dataclass(frozen=True, slots=True)
class WarcFile:
    name: str
    size: int
    modified: float
    open: bool  # its daemon is appending to it (or died doing so, not yet repaired)


def label(machine: str) -> str:
    """A machine's name as file names carry it."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", machine)


def file_name(stamp: str, serial: int, machine: str, pid: int, gzipped: bool) -> str:
    """`stamp` is UTC time as YYYYmmddHHMMSSfff, as Heritrix names its files."""
    return f"fetcher-{stamp}-{serial:05d}-{label(machine)}-{pid}.warc{'.gz' if gzipped else ''}"


def parse_name(name: str) -> tuple[str, int] | None:
    """(machine label, pid) of a file fetcher named; None for any other name."""
    found = _NAME.match(name)
    return (found.group(3), int(found.group(4))) if found else None


def is_gzipped(name: str) -> bool:
    return name.endswith(".gz")


def warc_files(root: Path) -> list[WarcFile]:
    """fetcher's WARC files in `root`, oldest first."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    found = []
    present = set(names)
    for name in sorted(names):
        if parse_name(name) is None:
            continue
        try:
            info = os.stat(root / name)
        except FileNotFoundError:
            continue
        found.append(WarcFile(name, info.st_size, info.st_mtime, name + OPEN in present))
    return found


def count_records(path: Path) -> collections.Counter[str]:
    """How many whole records of each type the file holds."""
    with open(path, "rb") as file:
        return collections.Counter(kind for _, _, kind in warc.scan(file, is_gzipped(path.name)))


def is_legacy(body_path: str | None) -> bool:
    """Whether a result's body_path names a body of the layout before WARC (no `#OFFSET`): the
    only bodies retention removes one by one, when no result names them any more."""
    return body_path is not None and "#" not in body_path


def read_body(root: Path, body_path: str) -> bytes | None:
    """The body a result names; None when it is gone (retention, or removed by hand)."""
    name, hashmark, offset = body_path.partition("#")
    if not hashmark:  # the layout before WARC
        file = (root / body_path).resolve()
        if not file.is_relative_to(root.resolve()) or not file.is_file():
            return None
        return file.read_bytes()
    if parse_name(name) is None or not offset.isdigit():
        return None
    try:
        with open(root / name, "rb") as handle:
            record = warc.read_record(handle, int(offset), is_gzipped(name))
    except (FileNotFoundError, ValueError):
        return None
    return warc.http_payload(record.block)


def remove_expired(root: Path, before: float) -> list[str]:
    """Remove the WARC files whose last record was written before `before`; their names. A
    file still marked open goes too once its daemon is known dead: this machine's by its pid;
    another machine's by its age alone, since a live daemon closes its file within
    FETCHER_WARC_MAX_AGE, which is at most half the retention (`Settings.warc_age_limit`), so
    an open file untouched for the whole retention is one nobody will close (its machine died
    or left the shared directory)."""
    gone = []
    for found in warc_files(root):
        if found.modified >= before or (found.open and not _abandoned(found.name)):
            continue
        (root / found.name).unlink(missing_ok=True)
        (root / (found.name + OPEN)).unlink(missing_ok=True)
        gone.append(found.name)
    return gone


def _abandoned(name: str) -> bool:
    """Whether the daemon that marked `name` open is gone (of another machine: assumed)."""
    owner = parse_name(name)
    if owner is None:
        return False
    if owner[0] != label(this_machine()):
        return True
    return owner[1] != os.getpid() and not process_alive(owner[1])


def repair(root: Path) -> None:
    """Files a daemon of this machine was appending to when it died: the torn last record cut
    off, the marker removed. A live daemon's file, and another machine's, are left alone."""
    here, me = this_machine(), os.getpid()
    for marker in sorted(root.glob("*" + OPEN)):
        name = marker.name[: -len(OPEN)]
        owner = parse_name(name)
        if owner is None or owner[0] != label(here):
            continue
        if owner[1] != me and process_alive(owner[1]):
            continue
        path = root / name
        if path.exists():
            with open(path, "r+b") as file:
                end = max((e for _, e, _ in warc.scan(file, is_gzipped(name))), default=0)
                size = file.seek(0, os.SEEK_END)
                if size > end:
                    file.truncate(end)
                    _log.warning("warc.repaired", file=name, cut_bytes=size - end)
        marker.unlink(missing_ok=True)
