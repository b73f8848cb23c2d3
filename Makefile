# Two commands for a new machine: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
# pip with a local index (pip.conf extra-index-url file:///...) that lacks a package prints
# "WARNING: Location '...' is ignored: it is neither a file nor a directory." once per package, ~100
# lines an install. Those lines alone are filtered out; every other warning and error still prints,
# and pip's exit status is kept (pipefail).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PIP := $(BIN)/python -m pip
QUIET_PIP := 2>&1 | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" || true; }

.PHONY: install test demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip $(QUIET_PIP)

# pip (not uv/poetry): it takes torch from this machine's local wheels under the pip cap.
$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[test]' $(QUIET_PIP)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/recaption demo --out demo-out

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
