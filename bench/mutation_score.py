"""The mutation score of the last `mutmut run`, per module: `make mutate` prints it.

A mutant is killed when a test failed on it or it ran past its time (a mutant that makes the
code hang); it survives when every test passed, and has no tests when none reaches its code.
Score = killed / all.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {"killed", "timeout"}


def main() -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run(
        [str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    by_module: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for line in out.splitlines():
        name, _, status = line.strip().partition(": ")
        if not status:
            continue
        # a method's mutant: fetcher.limits.xǁClassǁmethod__mutmut_3, a function's:
        # fetcher.urls.x_name__mutmut_3
        module = name.split(".x\u01c1")[0] if ".x\u01c1" in name else name.rsplit(".", 1)[0]
        by_module[module]["killed" if status in KILLED else status.split()[0]] += 1
    total: Counter[str] = Counter()
    head = ("module", "mutants", "killed", "survived", "no tests", "score")
    print("{:<20} {:>8} {:>7} {:>9} {:>9} {:>7}".format(*head))
    for module, counts in sorted(by_module.items()):
        total.update(counts)
        _row(module, counts)
    _row("all", total)
    return 0


def _row(name: str, counts: Counter[str]) -> None:
    n = sum(counts.values())
    score = counts["killed"] / n if n else 0.0
    print(
        f"{name:<20} {n:>8} {counts['killed']:>7} {counts['survived']:>9} {counts['no']:>9}"
        f" {score:>7.1%}"
    )


if __name__ == "__main__":
    sys.exit(main())
