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
# The solo-learn binding's tests run a second time against real solo-learn 1.0.6, in a venv of its own:
# solo-learn pins lightning==2.1.2, which imports pkg_resources (setuptools<81).
SOLO_VENV ?= .venv-solo
SOLO_PIP := $(SOLO_VENV)/bin/python -m pip
SOLO_GIT := https://github.com/vturrisi/solo-learn.git
SOLO_TESTS := tests/solo tests/runtime/test_interrupt.py

.PHONY: setup setup-solo data test test-solo test-fast bench lint clean gpu-bundle
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

# solo-learn 1.0.6 is not on PyPI: pip takes its wheel from a folder named by PIP_FIND_LINKS, else from
# GitHub; torch, solo-learn and sop-plugin in one pip run, so that solo-learn's pins hold. Neither
# source: $(SOLO_VENV)/.unavailable says why and the solo pass is skipped (SOP_REQUIRE_SOLO=1: an error).
$(SOLO_VENV)/.installed: setup.cfg setup.py pyproject.toml
	test -x $(SOLO_VENV)/bin/python || python3 -m venv $(SOLO_VENV)
	$(SOLO_PIP) install -q 'setuptools>=77,<81' wheel
	@rm -rf $(SOLO_VENV)/.unavailable $(SOLO_VENV)/.probe; \
	if $(SOLO_PIP) download -q --no-deps -d $(SOLO_VENV)/.probe solo-learn==1.0.6 >/dev/null 2>&1; then \
	  solo=solo-learn==1.0.6; \
	elif timeout 30 git ls-remote $(SOLO_GIT) HEAD >/dev/null 2>&1; then \
	  solo="solo-learn @ git+$(SOLO_GIT)@9187ea3"; \
	else \
	  echo "solo-learn 1.0.6 not installable: pip finds no wheel (PIP_FIND_LINKS=$${PIP_FIND_LINKS:-unset}) and $(SOLO_GIT) is unreachable" \
	    >$(SOLO_VENV)/.unavailable; \
	  if [ "$${SOP_REQUIRE_SOLO:-0}" != 0 ]; then cat $(SOLO_VENV)/.unavailable; exit 1; fi; exit 0; \
	fi; \
	echo "$(SOLO_PIP) install -q $(TORCH_SPEC) '$$solo' -e '.[dev]'"; \
	$(SOLO_PIP) install -q $(TORCH_SPEC) "$$solo" -e ".[dev]" && touch $@

setup-solo: $(SOLO_VENV)/.installed
	@if [ -f $(SOLO_VENV)/.unavailable ]; then cat $(SOLO_VENV)/.unavailable; fi

# tests/solo again, with Lightning 2.1.2's branch of the signal tests, in $(SOLO_VENV)
SOLO_PASS = if [ -f $(SOLO_VENV)/.unavailable ]; then \
	  echo "SKIPPED solo-learn pass ($(SOLO_TESTS)): $$(cat $(SOLO_VENV)/.unavailable)"; \
	else \
	  echo "solo-learn pass in $(SOLO_VENV): $(SOLO_TESTS)"; \
	  OMP_WAIT_POLICY=PASSIVE $(SOLO_VENV)/bin/python -m pytest -q $(SOLO_TESTS); \
	fi

# both passes run; either failing fails the target. $(VENV) has no solo-learn: it leaves tests/solo to
# the solo pass, or reports them skipped where that pass cannot run.
test: setup $(SOLO_VENV)/.installed
	@status=0; \
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q \
	  $$([ -f $(SOLO_VENV)/.unavailable ] || echo --ignore=tests/solo) || status=$$?; \
	$(SOLO_PASS) || status=$$?; \
	exit $$status

test-solo: $(SOLO_VENV)/.installed
	@$(SOLO_PASS)

# the quick loop: everything but the subprocess, DDP and full-fit tests (marked `slow`); tests/solo skip here
test-fast: setup
	OMP_WAIT_POLICY=PASSIVE SOP_REQUIRE_SOLO=0 $(PY) -m pytest -q -m "not slow"

# OpenMP threads sleep instead of spinning while they wait, so a shared CPU does not stall the
# run (sop-bench sets the same itself; docs/performance.md, "Shared CPU"); your OMP_WAIT_POLICY wins
bench: setup
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(VENV)/bin/sop-bench $(BENCH_ARGS)

# What benchmarks/gpu_run.sh carries to the GPU machine (no network there), in two git-ignored folders:
# .whl/ the wheels for CPython 3.12 of what the GPU image lacks (from PyPI, when you run this) and
# solo-learn 1.0.6's wheel and source tree (from SOLO_WHEELS, default the pip wheel folder PIP_FIND_LINKS:
# solo-learn is not on PyPI); .data/ the
# dataset. faiss-cpu, not faiss-gpu: PyPI's faiss GPU wheels for cp312 (faiss-gpu-cu12 48 MB, faiss-gpu
# 135 MB) are CUDA 12 builds needing nvidia-cublas-cu12 (581 MB), which the CUDA 13 image lacks and the
# 64 MiB that travel cannot hold (docs/performance.md, "GPU"). Prints what would travel against 64 MiB.
SOLO_WHEELS ?= $(PIP_FIND_LINKS)
GPU_WHEELS := lightly==1.6.0 hydra-core==1.3.2 omegaconf==2.3.0 faiss-cpu==1.15.1
gpu-bundle: setup
	@test -f "$(SOLO_WHEELS)/solo_learn-1.0.6-py3-none-any.whl" || \
	  { echo "no solo-learn wheel in SOLO_WHEELS='$(SOLO_WHEELS)' (make gpu-bundle SOLO_WHEELS=DIR)"; exit 1; }
	mkdir -p .whl && rm -f .whl/*.whl .whl/*.tar.gz
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	$(PIP) wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl
	cp $(SOLO_WHEELS)/solo_learn-1.0.6-py3-none-any.whl $(SOLO_WHEELS)/solo-learn-*.tar.gz .whl/
	mkdir -p .data/fashion-mnist && cp $(FMNIST_DIR)/*.gz .data/fashion-mnist/
	@tree=$$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1); \
	carried=$$(du -cb .whl .data | tail -1 | cut -f1); total=$$((tree + carried)); \
	awk -v t=$$tree -v c=$$carried 'BEGIN { m = 1048576; printf "travels: working tree %.1f MiB + .whl, .data %.1f MiB = %.1f MiB of 64 MiB\n", t / m, c / m, (t + c) / m }'; \
	test $$total -le 67108864 || { echo "over the 64 MiB the device tool carries"; exit 1; }

lint: setup
	$(VENV)/bin/ruff check sop_plugin tests benchmarks
	$(VENV)/bin/ruff format --check sop_plugin tests benchmarks

clean:
	rm -rf $(VENV) $(SOLO_VENV) .pytest_cache
