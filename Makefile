# Every target installs what it needs into .venv first. torch is pinned before anything else so that pip never
# resolves an unpinned torch to a multi-GB CUDA build on a CPU machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test test-quick lint format demo bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[test,dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m isort --check-only ideal_components tests benchmarks
	$(PY) -m black --check -l 120 --skip-magic-trailing-comma ideal_components tests benchmarks
	$(PY) -m flake8 ideal_components tests benchmarks

format: $(STAMP)
	$(PY) -m isort ideal_components tests benchmarks
	$(PY) -m black -l 120 --skip-magic-trailing-comma ideal_components tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
