# ukr-hw — the two commands:
#   make up     set everything up, train a first model if there is none, start the API + the sketchpad
#   make test   set everything up and run the test suite (what CI runs)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU torch: a local wheel folder when the machine has one, else PyTorch's CPU index (never the CUDA build).
TORCH_SOURCE := $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)

.PHONY: setup up test test-unit lint format system-packages clean-state

setup: $(VENV)/.installed system-packages  ## create .venv from requirements.lock, install the package, fonts

$(VENV)/.installed: requirements.lock pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	uv venv $(VENV) --python 3.11 --allow-existing -q
	uv pip sync --python $(PY) $(TORCH_SOURCE) requirements.lock
	uv pip install --python $(PY) --no-deps -e . -q
	@touch $@

system-packages:  ## handwriting fonts (synthetic training data) and, for tests, chromium — via apt when root
	@bash deploy/system-packages.sh

up: setup  ## the main job: train a first model if needed, then serve the API and the UI
	$(VENV)/bin/ukr-hw up

test: setup  ## the test suite, exactly as CI runs it: tests/unit, tests/integration, tests/e2e
	$(PY) -m pytest

test-unit: setup  ## the fast tier: no servers, no flows (about a minute)
	$(PY) -m pytest tests/unit -q

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

requirements.lock: pyproject.toml  ## re-resolve the pinned environment after changing dependencies
	uv pip compile pyproject.toml --extra dev --python-version 3.11 $(TORCH_SOURCE) -o $@
