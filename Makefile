# goop — every entry point a person or CI needs. Nothing is assumed installed:
# the virtualenv and the Debian packages are made here (`make run`: runtime
# dependencies only; `make test`: the test tools and browsers too).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
BIN     = $(VENV)/bin
# Where `make run` listens; override: make run RUN_PORT=9000
RUN_PORT ?= 8787
# The admin page's password for `make run` (user "admin"); empty: one is made
# up and printed at start. Override: make run RUN_ADMIN_PASSWORD=...
RUN_ADMIN_PASSWORD ?=

.PHONY: help venv runtime install install-runtime run test check lint typecheck unit sysdeps clean bench soak

help:
	@echo "make run    - create .venv (runtime dependencies only), install goop, start a rendezvous on http://127.0.0.1:$(RUN_PORT)/"
	@echo "make test   - create .venv, install goop and the test tools, run pytest (+hypothesis), mypy --strict, ruff"

# What `make run` needs: goop's runtime dependencies, once per change of
# pyproject.toml. pip's own lines show the progress of the first install.
$(VENV)/.runtime: pyproject.toml
	@bash tools/sysdeps.sh runtime
	@echo "make: creating $(VENV) and installing goop's dependencies (about a minute the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install --progress-bar off --no-color . | grep -E "^(Collecting|Successfully)" || true
	$(PY) -c "import goop, twisted, klein, libp2p"  # the install above is checked here
	touch $@

# What `make test` (and the benchmarks) add: the test tools, Chromium, iproute2.
$(VENV)/.deps: $(VENV)/.runtime
	@bash tools/sysdeps.sh test
	$(PY) -m pip install -q ".[test]"
	touch $@

runtime: $(VENV)/.runtime
venv: $(VENV)/.deps

# goop itself is installed as a real (non-editable) package every time, so the
# tests exercise what `pip install .` gives a user, twistd plugin included.
install: venv
	$(PY) -m pip install -q --no-deps --force-reinstall .

install-runtime: runtime
	$(PY) -m pip install -q --no-deps --force-reinstall .

# Debian packages the tests need (headless Chromium, iproute2) and goop's build.
sysdeps:
	@bash tools/sysdeps.sh test

# Ctrl-C stops it quietly: twistd re-raises the SIGINT it handled, which make
# would report as "*** Interrupt".
run: install-runtime
	@pw='$(RUN_ADMIN_PASSWORD)'; \
	[ -n "$$pw" ] || pw=$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(12))'); \
	echo "goop: starting a rendezvous on http://127.0.0.1:$(RUN_PORT)/ (Ctrl-C stops it)"; \
	echo "goop: its admin page: http://127.0.0.1:$(RUN_PORT)/admin, user admin, password $$pw"; \
	echo "      (choose the password: make run RUN_ADMIN_PASSWORD=...)"; \
	trap 'exit 0' INT; \
	$(BIN)/twistd --pidfile= -n goop --rendezvous-only --rendezvous-port $(RUN_PORT) \
	    --admin-password "$$pw"

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
