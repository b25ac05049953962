# The single entry point. `make demo` and `make test` each create and reuse their own venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch for the trainer and the tests. 2.13.0 is the CPU build that lies on the CI machine's disk; an
# unpinned `torch` would pull a multi-GB CUDA build on every fresh run. Users with a GPU override it:
# `make test TORCH="torch>=2.2"`. The package itself only asks for torch>=2.2 (the `train` extra).
TORCH ?= torch==2.13.0
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: demo test test-all lint format bundle push clean web

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

# Deploy: build dist/featherface-<release>.tar.gz, or push it over ssh:
#   make push HOSTS="pi@cam1.lan pi@cam2.lan" [PUSH_ARGS="-i ~/.ssh/id_ed25519"]
# (needs the dev venv: building the wheel offline needs setuptools>=68 in it)
bundle: $(VENV)/.dev-installed
	$(BIN)/python -m deploy build --out dist

push: bundle
	@test -n "$(HOSTS)" || { echo 'usage: make push HOSTS="user@host ..." [PUSH_ARGS="..."]'; exit 2; }
	$(BIN)/python -m deploy push $(HOSTS) $(PUSH_ARGS)

# The browser page (web/): onnxruntime-web from npm, pinned in web/package-lock.json, vendored with
# the page and the shipped model into web/dist (about 40 MB, ignored), which `featherface-edge serve`
# serves at /. config.json holds the [detector] thresholds of edge/config.example.toml for a page
# served by anything else (serve answers it from its own config). Needs node and npm.
web: web/dist/index.html

web/dist/index.html: web/package-lock.json web/build.mjs $(wildcard web/src/*) edge/models/featherface-nano-b.onnx
	cd web && npm ci --no-audit --no-fund --loglevel=error
	cd web && node build.mjs
	python3 -c 'import json, tomllib; d = tomllib.load(open("edge/config.example.toml", "rb"))["detector"]; \
		print(json.dumps({k: d[k] for k in ("score_threshold", "nms_threshold")}))' > web/dist/config.json

clean:
	rm -rf $(VENV) build dist *.egg-info web/dist web/node_modules
