# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where torch comes from: empty means pip's own configuration (PyPI's torch 2.13.0 is the
# CUDA build on Linux; a machine whose pip finds the CPU wheel locally gets that). Set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU build from PyTorch's index.
TORCH_INDEX ?=
# Test processes (pytest-xdist; each test runs torch on one thread). 0: one process.
JOBS ?= 2
PYTEST := QT_QPA_PLATFORM=offscreen TRITON_INTERPRET=1 $(BIN)/pytest -q -n $(JOBS)

.PHONY: setup demo test test-slow test-all lint clean

$(BIN)/fmn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: pyproject admits any torch>=2.4,<3, and pip keeps an installed torch
	# that satisfies it, so the editable install below fetches no other torch.
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/fmn

setup: $(BIN)/fmn

demo: setup
	$(BIN)/fmn demo

# The default suite; long tests are marked slow. loadscope: a module's tests (and its
# module-scoped fixtures) stay on one process.
test: lint
	$(PYTEST) --dist loadscope

# Only the slow tests (documented measurements, training runs), spread one by one.
test-slow: setup
	$(PYTEST) --dist load -m 'slow and not gpu'

# Everything that runs without a GPU: lint, the default suite, then the slow tests.
test-all: test test-slow

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
