# Quick start: `make run` serves on the embedded default; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench cluster clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/aetherion run

# Three instances on loopback against the machine's NATS and MariaDB (docs/scale-out.md).
cluster: $(STAMP)
	$(BIN)/python scripts/cluster.py

lint: $(STAMP)
	$(BIN)/ruff check aetherion tests bench migrations scripts
	$(BIN)/mypy --strict aetherion
	$(BIN)/lint-imports

# The dashboard test drives Debian's chromium through Playwright (no browser downloads).
/usr/bin/chromium:
	$$([ "$$(id -u)" = 0 ] || echo sudo) sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium'

test: lint /usr/bin/chromium
	$(BIN)/python -m pytest

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

# Every benchmark, each of which also runs alone: .venv/bin/python bench/NAME.py
bench: $(BENCH_STAMP)
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
