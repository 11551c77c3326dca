# goop — every entry point a person or CI needs. Nothing is assumed installed:
# the virtualenv and the Debian packages the tests need are made here.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
BIN     = $(VENV)/bin
# Where `make run` listens; override: make run PORT=9000
RUN_PORT ?= 8787

.PHONY: help venv install run test check lint typecheck unit sysdeps clean bench soak

help:
	@echo "make run    - create .venv, install goop, start a rendezvous on http://127.0.0.1:$(RUN_PORT)/"
	@echo "make test   - create .venv, install goop, run pytest (+hypothesis), mypy --strict, ruff"

# Dependencies are installed once per change of pyproject.toml.
$(VENV)/.deps: pyproject.toml
	@bash tools/sysdeps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q ".[test]"
	touch $@

venv: $(VENV)/.deps

# goop itself is installed as a real (non-editable) package every time, so the
# tests exercise what `pip install .` gives a user, twistd plugin included.
install: venv
	$(PY) -m pip install -q --no-deps --force-reinstall .

# Debian packages some tests need (headless Chromium for the dashboard test).
sysdeps:
	@bash tools/sysdeps.sh

run: install
	@echo "goop: starting a rendezvous; open http://127.0.0.1:$(RUN_PORT)/ (Ctrl-C stops it)"
	$(BIN)/twistd --pidfile= -n goop --rendezvous-only --rendezvous-port $(RUN_PORT)

unit: install sysdeps
	$(BIN)/pytest -q

typecheck: venv
	$(BIN)/mypy goop twisted/plugins/goop_plugin.py

lint: venv
	$(BIN)/ruff check goop tests twisted goop.tac

test: unit typecheck lint
	@echo "make test: all checks passed"

# SSE fan-out benchmark (server on core 0, load generator on core 1); writes
# docs/benchmarks.md. Quick run: make bench BENCH_ARGS="--seconds 3 --cells 10:2,200:max"
bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

# The hardening attack mix for 120 s against a pinned server (about 3 minutes);
# writes docs/hardening.md. Quick look: make soak SOAK_ARGS="--seconds 20 --no-write"
soak: install
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .hypothesis
