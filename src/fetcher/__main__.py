"""`python -m fetcher` is the `fetcher` command."""

from fetcher.cli import main

raise SystemExit(main())
