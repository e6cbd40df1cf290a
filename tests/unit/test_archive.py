"""The body directory's files (`archive.py`): names, reading a body back, counting records, and
the repair at start, at their edges. test_warc.py covers the common paths; these were found
missing by mutation testing of archive.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fetcher import archive
from tests.unit.test_warc_records import response

STAMP = "20260101000000000"
HERE = socket.gethostname()
DEAD_PID = 2**22 + 12345  # above any pid_max: nobody


def test_file_names_as_crawlers_name_them() -> None:
    """Heritrix's shape; a machine's name made safe for a file name; gzip by its suffix."""
    assert archive.label("web-1.example_x") == "web-1.example_x"
    assert archive.label("a b/c:d") == "a_b_c_d"
    assert archive.file_name(STAMP, 7, "a b", 42, True) == f"fetcher-{STAMP}-00007-a_b-42.warc.gz"
    assert archive.file_name(STAMP, 7, "Web", 42, False) == f"fetcher-{STAMP}-00007-Web-42.warc"
    assert archive.parse_name(f"fetcher-{STAMP}-00007-a_b-42.warc.gz") == ("a_b", 42)
    assert archive.parse_name("notes.warc") is None
    assert archive.is_gzipped("x.warc.gz") and not archive.is_gzipped("x.warc")


def test_which_body_paths_are_of_the_layout_before_warc() -> None:
    assert archive.is_legacy("ab/" + "cd" * 31)
    assert not archive.is_legacy(f"fetcher-{STAMP}-00001-m-1.warc#0")
    assert not archive.is_legacy(None)


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_body_reads_back_and_the_records_are_counted(tmp_path: Path, gzipped: bool) -> None:
    name = archive.file_name(STAMP, 1, "m", 1, gzipped)
    first = response(b"one", gzipped)
    (tmp_path / name).write_bytes(first + response(b"two", gzipped))
    assert archive.read_body(tmp_path, f"{name}#{len(first)}") == b"two"
    assert archive.count_records(tmp_path / name) == {"response": 2}


def test_a_legacy_body_reads_back_only_from_inside_the_directory(tmp_path: Path) -> None:
    """A body_path of the old layout is a file under the body directory; one that leads out
    of it (a row edited by hand) reads as gone, as does a WARC file not named by fetcher."""
    root = tmp_path / "bodies"
    (root / "ab").mkdir(parents=True)
    (root / "ab" / ("cd" * 31)).write_bytes(b"old body")
    (tmp_path / "outside").write_bytes(b"secret")
    (tmp_path / "outside.warc").write_bytes(response(b"secret"))
    assert archive.read_body(root, "ab/" + "cd" * 31) == b"old body"
    assert archive.read_body(root, "../outside") is None
    assert archive.read_body(root, "ab") is None  # a directory
    assert archive.read_body(root, "../outside.warc#0") is None
    assert archive.read_body(root, f"fetcher-{STAMP}-00001-m-1.warc#x") is None


@pytest.mark.parametrize("gzipped", [False, True])
def test_repair_cuts_a_torn_end_logs_it_and_leaves_a_whole_file_as_it_is(
    tmp_path: Path, gzipped: bool
) -> None:
    """A dead daemon's file: cut to its last whole record (to nothing if it has none), the cut
    logged with its size; a file that ends whole is not touched nor logged. Another
    machine's file, a live daemon's, and a marker of no file of ours are left alone, whatever
    order the markers come in."""
    whole = response(b"x" * 100, gzipped)
    files = {
        "torn": (archive.file_name(STAMP, 1, HERE, DEAD_PID, gzipped), whole + whole[:50]),
        "no whole record": (archive.file_name(STAMP, 2, HERE, DEAD_PID, gzipped), whole[:50]),
        "whole": (archive.file_name(STAMP, 3, HERE, DEAD_PID, gzipped), whole * 2),
        "elsewhere": (archive.file_name(STAMP, 0, "other-machine", 9, gzipped), whole[:50]),
    }
    for name, data in files.values():
        (tmp_path / name).write_bytes(data)
        (tmp_path / (name + archive.OPEN)).touch()
    (tmp_path / ("notes.txt" + archive.OPEN)).touch()
    with capture_logs() as logs:
        archive.repair(tmp_path)
    assert (tmp_path / files["torn"][0]).read_bytes() == whole
    assert (tmp_path / files["no whole record"][0]).read_bytes() == b""
    assert (tmp_path / files["whole"][0]).read_bytes() == whole * 2
    assert (tmp_path / files["elsewhere"][0]).read_bytes() == whole[:50]
    assert sorted(p.name for p in tmp_path.glob("*" + archive.OPEN)) == [
        files["elsewhere"][0] + archive.OPEN, "notes.txt" + archive.OPEN
    ]  # fmt: skip
    assert sorted((e["event"], e["file"], e["cut_bytes"]) for e in logs) == [
        ("warc.repaired", files["torn"][0], 50),
        ("warc.repaired", files["no whole record"][0], 50),
    ]  # fmt: skip


def test_repair_removes_a_marker_whose_file_never_came(tmp_path: Path) -> None:
    """A daemon killed between its marker and its file's first byte."""
    name = archive.file_name(STAMP, 1, HERE, DEAD_PID, False)
    (tmp_path / (name + archive.OPEN)).touch()
    archive.repair(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_file_removed_while_listed_is_skipped_not_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another daemon's retention on a shared directory may remove a file between the listing
    and its stat: that file is left out, the ones after it are still listed."""
    names = [archive.file_name(STAMP, serial, "m", 1, False) for serial in (1, 2, 3)]
    for name in names:
        (tmp_path / name).write_bytes(response(b"x"))
    real_stat = os.stat

    def stat(path: os.PathLike[str] | str) -> os.stat_result:
        if Path(path).name == names[1]:
            raise FileNotFoundError(path)
        return real_stat(path)

    monkeypatch.setattr(os, "stat", stat)
    assert [found.name for found in archive.warc_files(tmp_path)] == [names[0], names[2]]
