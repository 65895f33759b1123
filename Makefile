# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: install test test-all demo benchmark clean

install: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -m "not slow"

test-all: install
	$(PY) -m pytest -q

demo: install
	$(PY) scripts/demo.py

# `make benchmark` runs the speed benchmarks; `make benchmark BENCHMARKS=driving` the 11-min one.
BENCHMARKS ?= loader sim drive
benchmark: install
	for name in $(BENCHMARKS); do $(PY) scripts/benchmark.py $$name || exit 1; done

clean:
	rm -rf outputs multirun .pytest_cache
