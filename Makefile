# oceanus — the commands people and CI both use.
#   make run    the whole pipeline locally (redis-server child, collector, flusher -> DuckDB)
#   make test   install what is missing, then the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: run run-deps test unit lint typecheck bench chaos soak loadtest mutate system-deps venv clean

# Every Python tree the linters and the type checker read (pre-commit runs the same).
PY_DIRS := oceanus collector flusher importer notifier bench tests loadtest tools

# The image's pins (docker/constraints.txt) hold here too: tests run on the code the image ships,
# and a release upstream cannot change a build of the same commit.
$(STAMP): pyproject.toml docker/constraints.txt flusher/_columns.c collector/_query.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench,lint]' -c docker/constraints.txt
	$(PY) -m tests.support.spatial
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages a fresh box may lack. Installed with apt when we are root;
# otherwise one line says what to install.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	test -f "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing — install with: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi

# `make run` needs only the package and redis-server: a newcomer does not wait
# for the test and bench extras (or wrk, promtool, chromium) to see data flow.
RUN_STAMP := $(VENV)/.installed-run
DEV_ARGS ?=

$(RUN_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -f $(STAMP) -a $(STAMP) -nt pyproject.toml || $(PY) -m pip install -q -e .
	@touch $(RUN_STAMP)

run-deps:
	@command -v redis-server >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing: redis-server"; \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; \
	else \
	  echo "redis-server is missing — install it with: sudo apt-get install -y redis-server" >&2; exit 1; \
	fi

run: run-deps $(RUN_STAMP)
	$(VENV)/bin/oceanus dev $(DEV_ARGS)

# Lint and types first, then every test but the long scenarios (marked slow, left
# to `make chaos` / `make soak`).
test: system-deps $(STAMP) lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Seconds, no servers: tests/conftest.py marks whatever starts one `integration`,
# and in this tier a server started anyway fails its test.
unit: $(STAMP)
	PYTEST_TIER=unit $(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

# Fault scenarios at length: kill -9, Redis outages, BigQuery outage, rolling restarts,
# lost claim replies, SQL warehouse outages, channel outages of the notifier.
chaos: system-deps $(STAMP)
	$(PY) -m pytest -m slow -s tests $(PYTEST_ARGS)

# 10 minutes at ~80% of the measured maximum; RSS flat, lag bounded (SOAK_SECONDS=60 for a quick proof).
soak: system-deps $(STAMP)
	$(PY) -m tests.reliability.soak --seconds $${SOAK_SECONDS:-600}

lint: $(STAMP) typecheck
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)

typecheck: $(STAMP)
	$(VENV)/bin/mypy $(PY_DIRS)

bench: system-deps $(STAMP)
	$(PY) -m bench collector --seconds 10 --json
	$(PY) -m bench flusher --rows 200000 --json
	$(PY) -m bench memory --json

loadtest: system-deps $(STAMP)
	$(PY) -m loadtest.run --run-time $${LOADTEST_TIME:-30s}

# Mutation testing of the modules that decide whether an event survives (docs/TESTING.md):
# one worker, a timeout per mutant; hours for every module, so not in CI.
# MUTATE_ARGS="--module flusher/claim.py --sample 2" narrows it; reports in build/mutate/.
mutate: system-deps $(STAMP)
	$(PY) tools/mutate.py $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) .oceanus .pytest_cache .mypy_cache .ruff_cache
