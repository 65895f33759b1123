# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

# hydra-optuna-sweeper 1.3.0 (the last release) declares optuna<3, whose storage fails with the
# SQLAlchemy 2 that MLflow needs; it works with the Optuna 5 pinned in requirements.txt, so it is
# installed without its declared dependencies (`pip check` reports exactly that mismatch).
OPTUNA_SWEEPER := hydra-optuna-sweeper==1.3.0
# PostgreSQL server binaries (initdb, pg_ctl) for the tests that start a throwaway server.
PG_CTL := $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl) $(shell command -v pg_ctl))

.PHONY: install postgres chromium test test-all demo docs benchmark clean

install: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps $(OPTUNA_SWEEPER)
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Debian's postgresql package when the server binaries are missing (needs root and apt-get; the
# tests that need PostgreSQL skip, saying why, where it cannot be installed).
postgres:
ifeq ($(PG_CTL),)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's postgresql package (server binaries for the tests)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends postgresql >/dev/null; } \
	  || echo "note: installing postgresql failed: the PostgreSQL tests will skip"; \
	else \
	  echo "note: no PostgreSQL server binaries, and apt-get needs root: the PostgreSQL tests will skip"; \
	fi
endif

# Debian's chromium and chromium-driver for the review app's browser tests (tests/test_review.py),
# installed like PostgreSQL above; the browser tests skip, saying why, where they cannot be.
CHROMEDRIVER := $(firstword $(wildcard /usr/bin/chromedriver) $(shell command -v chromedriver))

chromium:
ifeq ($(CHROMEDRIVER),)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver (headless browser for the tests)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium chromium-driver >/dev/null; } \
	  || echo "note: installing chromium failed: the browser tests will skip"; \
	else \
	  echo "note: no chromedriver, and apt-get needs root: the browser tests will skip"; \
	fi
endif

# Two test processes (the tests are mostly single-threaded subprocesses); a file's tests stay in one.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile

# The import contracts (.importlinter: layers without cycles) first: seconds, and a broken one
# says which import to move.
test: install postgres chromium
	$(VENV)/bin/lint-imports
	$(PYTEST) -m "not slow"

test-all: install postgres chromium
	$(VENV)/bin/lint-imports
	$(PYTEST)

demo: install
	$(PY) scripts/demo.py

# The documentation site (docs/, mkdocs.yml) in site/; the test suite builds it too, --strict.
docs: install
	$(PY) -m mkdocs build --strict

# `make benchmark` runs the speed benchmarks; `make benchmark BENCHMARKS=driving` the 11-min one.
BENCHMARKS ?= loader sim drive review
benchmark: install
	for name in $(BENCHMARKS); do $(PY) scripts/benchmark.py $$name || exit 1; done

clean:
	rm -rf outputs multirun .pytest_cache site
