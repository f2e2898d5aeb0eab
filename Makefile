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

.PHONY: setup data test bench lint clean
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

bench: setup
	$(VENV)/bin/sop-bench $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check sop_plugin tests

clean:
	rm -rf $(VENV) .pytest_cache
