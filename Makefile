# tinyclip-repro: the user interface. Every target depends on `env`, which does nothing when .venv is current.
#   make reproduce-table2   the main job (PROFILE=mini by default; smoke | mini | paper)
#   make test               the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= mini
STAMP := $(VENV)/.installed

.PHONY: env test models data smoke check-resume reproduce-table2 lab clean-reports

env: $(STAMP)

# torch 2.14.1 / torchvision 0.29.1 are served from this machine's disk; every other pin comes from PyPI.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

test: env
	$(PY) -m pytest

models: env
	$(PY) -m tinyclip models

lab: env
	$(VENV)/bin/jupyter lab notebooks/
