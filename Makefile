# `make demo`: install into .venv and run the main job.  `make test`: install and run the tests.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
# The real CIFAR-10 copy beside the repository, when there is one (override with DIPDEF_CIFAR10=...).
export DIPDEF_CIFAR10 ?= $(wildcard $(abspath ../shared/data/cifar10-jpeg.tar.gz))

.PHONY: install demo test lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Without a local copy, torchvision's CIFAR-10 is downloaded into ~/.cache/dipdefense/cifar10.
demo: install
	$(PY) evaluate.py --defense dip_stitch --out runs/demo $(if $(DIPDEF_CIFAR10),,--download)

test: install
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash .ci/layers

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) logs .pytest_cache
