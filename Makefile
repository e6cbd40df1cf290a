# Every target bootstraps its own virtualenv in .venv from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format bench bench-smoke mutate install-service clean bytecode

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# fetcher's own modules compiled ahead, as an installed package's are: the editable install
# leaves them to be compiled on import, which with PYTHONDONTWRITEBYTECODE set (as on these
# machines) happens again in every process, 40-70 ms a daemon start (BENCHMARKS.md, "start-up")
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q src

demo: bytecode  ## a local origin on loopback, the real daemon, the stats table
	$(BIN)/fetcher demo

test: lint bytecode  ## lint, then the whole test suite, on two workers (each its own origin, ports, databases)
	$(BIN)/pytest -n 2

lint: $(STAMP)  ## ruff (lint and format) and mypy --strict
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: bytecode  ## throughput against the bare loops and Scrapy, politeness, scale, PostgreSQL (see BENCHMARKS.md)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/run.py --scale
	$(BIN)/python bench/scale_out.py

bench-smoke: bytecode  ## the benchmark at tiny sizes: does it still run
	$(BIN)/python bench/run.py --smoke --scale
	$(BIN)/python bench/scale_out.py --smoke

mutate: $(STAMP)  ## mutation testing of the pure core, the counters, robots.txt, WARC (slow; not in make test)
	$(BIN)/python -m pip install --quiet -e '.[dev,mutate]'
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2
	$(BIN)/python bench/mutation_score.py

install-service:  ## install fetcher as a systemd service (as root)
	sh config/install.sh

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache mutants
