# The single entry point. `make demo` and `make test` each create and reuse their own venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch for the trainer and the tests. 2.13.0 is the CPU build that lies on the CI machine's disk; an
# unpinned `torch` would pull a multi-GB CUDA build on every fresh run. Users with a GPU override it:
# `make test TORCH="torch>=2.2"`. The package itself only asks for torch>=2.2 (the `train` extra).
TORCH ?= torch==2.13.0
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: demo test test-all lint format bundle clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Device-side install: what a Raspberry Pi gets (no torch).
$(VENV)/.edge-installed: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[edge,broker]'
	touch $@

# Everything: edge + OpenVINO + trainer + test tools.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) '$(TORCH)'
	$(PIP) -e '.[edge,openvino,train,dev]'
	touch $@ $(VENV)/.edge-installed

demo: $(VENV)/.edge-installed
	$(BIN)/featherface-edge demo

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest

test-all: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -m ''

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build dist *.egg-info
