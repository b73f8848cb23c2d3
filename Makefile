# Two commands for a new machine: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
# Two kinds of pip noise are dropped, nothing else: a local index (pip.conf extra-index-url
# file:///...) that lacks a package prints "WARNING: Location '...' is ignored" once per package
# (~100 lines an install), and setuptools warns on every editable install of a package-dir mapping
# (prompts/ ships as recaption.prompts). Errors and other warnings still print; pipefail keeps
# pip's exit status.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PIP := $(BIN)/python -m pip
QUIET_PIP := 2>&1 | awk '/^WARNING: Location .* is ignored: it is neither a file nor a directory/ {next} \
	/BuildBackendWarning: Editable installation/ {skip=1} skip && /WheelFile\(wheel_path/ {skip=0; next} !skip'

.PHONY: install test test-fast lint demo bench bench-mix clean

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

# the suite without the tests marked slow (processes, Ray, browser, wheel, trainer; tests/test_tiers.py
# finds them): under 2 minutes on 2 idle cores. It prints its time and its ten slowest tests.
test-fast: $(STAMP)
	@start=$$(date +%s); $(BIN)/python -m pytest -q -m "not slow" --durations=10 $(PYTEST_ARGS); rc=$$?; \
	took=$$(( $$(date +%s) - start )); echo "make test-fast: $${took} s (budget: 120 s on 2 idle cores)"; \
	if [ $$took -gt 120 ]; then echo "make test-fast: over budget: mark what starts processes slow"; fi; exit $$rc

# ruff's rules as pyproject.toml configures them; CI runs this before the tests
lint: $(STAMP)
	$(BIN)/ruff check recaption tests scripts eval prompts

demo: $(STAMP)
	$(BIN)/recaption demo --out demo-out

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

# mix at 1M and 10M annotation rows (data built once under /tmp/recaption-bench-mix, ~3.5 GB)
bench-mix: $(STAMP)
	$(BIN)/python scripts/bench_mix.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
