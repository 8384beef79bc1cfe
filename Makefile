# The two commands of the README: `make run` (embedded default, demo data) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is for GPU workers (the `gpu` extra) and for CI, which tests the torch kernels against the
# NumPy ones on torch's CPU build: `make install-dev` installs that build, pinned, from a local
# wheel when pip finds one (find-links), else from TORCH_CPU_INDEX_URL. `make install` and
# `make run` install no torch.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX_URL ?= https://download.pytorch.org/whl/cpu
# Where `make run` listens: `make run PORT=8001 HOST=0.0.0.0`.
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-dev install-torch-cpu run test lint check-install

$(PY):
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)

# The default install: API, CPU workers and the engine on NumPy/SciPy; no torch.
install: $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[ml,sweeps]'

# The CPU build alone first (--no-deps: a local wheel needs no index), then its dependencies; with
# torch==$(TORCH_VERSION) installed, nothing later pulls another build.
install-torch-cpu: $(PY)
	$(PIP) install -q --no-deps --no-index 'torch==$(TORCH_VERSION)' 2>/dev/null \
		|| $(PIP) install -q --no-deps --index-url '$(TORCH_CPU_INDEX_URL)' 'torch==$(TORCH_VERSION)'
	$(PIP) install -q 'torch==$(TORCH_VERSION)'
	$(PY) -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

install-dev: install install-torch-cpu
	$(PIP) install -q -e '.[ml,sweeps,dev]'

run: install
	$(VENV)/bin/licchavi serve --demo --host $(HOST) --port $(PORT)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: install-dev lint
	$(VENV)/bin/pytest -q -ra

# What the default install resolves to on a clean index (no torch, no CUDA), and its size.
check-install: install
	$(PY) scripts/check_install.py --sizes
