# The two commands of the README: `make run` (embedded default, demo data) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0
# Where `make run` listens: `make run PORT=8001 HOST=0.0.0.0`.
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-dev run test lint

$(PY):
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)

# torch first, pinned to the CPU build, so no dependency pulls another build of it.
install: $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e '.[ml,sweeps]'

install-dev: install
	$(PIP) install -q -e '.[ml,sweeps,dev]'

run: install
	$(VENV)/bin/licchavi serve --demo --host $(HOST) --port $(PORT)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: install-dev lint
	$(VENV)/bin/pytest -q -ra
