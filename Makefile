# sop-plugin: `make bench` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Where pip is capped to the torch build on local disk (this workplace), take exactly it;
# elsewhere take PyPI's torch for the platform.
ifneq ($(wildcard /etc/xdg/pip/constraints.txt),)
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
else
TORCH_SPEC ?= torch torchvision
endif
FMNIST_DIR := /usr/share/datasets/fashion-mnist
APT := $(shell command -v apt-get 2>/dev/null)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BENCH_ARGS ?=

.PHONY: setup data test test-fast bench lint clean gpu-bundle
setup: $(VENV)/.installed data

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist, when missing and apt is available.
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ -n "$(APT)" ]; then \
	    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "note: Fashion-MNIST not found at $(FMNIST_DIR) and no apt-get: pass data.path=... to sop-bench"; fi; \
	fi

test: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

# the quick loop: everything but the subprocess, DDP and full-fit tests (marked `slow`)
test-fast: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -m "not slow"

# OpenMP threads sleep instead of spinning while they wait, so a shared CPU does not stall the
# run (sop-bench sets the same itself; docs/performance.md, "Shared CPU"); your OMP_WAIT_POLICY wins
bench: setup
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(VENV)/bin/sop-bench $(BENCH_ARGS)

# What benchmarks/gpu_run.sh carries to a GPU machine without network: wheels of the packages a
# plain CUDA/torch image lacks (cp312, downloaded from PyPI when you run this) and the dataset.
gpu-bundle: setup
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl lightly==1.6.0 hydra-core==1.3.2 omegaconf==2.3.0 faiss-cpu==1.15.1
	$(PIP) wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl
	mkdir -p .data/fashion-mnist && cp $(FMNIST_DIR)/*.gz .data/fashion-mnist/

lint: setup
	$(VENV)/bin/ruff check sop_plugin tests benchmarks
	$(VENV)/bin/ruff format --check sop_plugin tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
