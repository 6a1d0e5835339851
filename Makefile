# Two commands for a new user:  `make run`  (set up, then the main job)  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of PyTorch; on a CUDA machine use e.g. `make run TORCH_SPEC=torch` (or your own venv).
TORCH_SPEC ?= torch==2.13.0
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
RUN_DIR ?= runs/main

.PHONY: setup data run test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

data:
	@if [ -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "Fashion-MNIST not found in $(FMNIST_DIR): run 'sudo apt-get install dataset-fashion-mnist' or set FMNIST_DIR=<folder with the IDX .gz files>" >&2; exit 2; \
	fi

run: setup data
	$(PY) -m topoat study studies/main.yaml --out $(RUN_DIR) --set data.root=$(FMNIST_DIR) $$([ -d "$(RUN_DIR)" ] && echo --resume)
	$(PY) -m topoat report $(RUN_DIR)

test: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m pip install -q -e ".[lint]"
	$(PY) -m ruff check src tests benchmarks docs
	$(PY) -m ruff format --check src tests benchmarks docs
	$(PY) -m mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
