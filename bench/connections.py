"""Connections a daemon opens to one host, per git revision: `fetcher run --drain` of N URLs
against the demo origin (which counts connections and `Connection: close` requests), each
revision's `src/` first on PYTHONPATH.

    .venv/bin/python bench/connections.py 8ecf51e HEAD
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from ab import checkout
from run import fetcher_env

from fetcher.demo import Origin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+")
    parser.add_argument("--urls", type=int, default=5_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fetcher-connections-"))
    sources = {rev: checkout(rev, work / rev.replace("/", "_")) for rev in args.revisions}
    with Origin(["127.0.0.2"], 0) as origin:
        for rev, src in sources.items():
            origin.reset_stats()
            run_dir = Path(tempfile.mkdtemp(dir=work))
            urls = run_dir / "urls.txt"
            urls.write_text("".join(f"{origin.url(f'ok/{i}')}\n" for i in range(args.urls)))
            env = fetcher_env(
                run_dir / "f.db", max_concurrency=64, host_concurrency=64, host_rate=0
            )
            env["PYTHONPATH"] = str(src)
            fetcher = [sys.executable, "-m", "fetcher"]
            subprocess.run([*fetcher, "submit", "-f", str(urls)], env=env, check=True)
            subprocess.run([*fetcher, "run", "--drain"], env=env, check=True, capture_output=True)
            host = origin.host()
            print(
                f"{rev:>10}  requests {origin.stats.requests[host]:,}"
                f"  connections {len(origin.stats.connections[host]):,}"
                f"  Connection: close asked {sum(origin.stats.closing[host]):,}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
