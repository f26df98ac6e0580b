# tinyclip-repro: the user interface. Every target depends on `env`, which does nothing when .venv is current.
#   make reproduce-table2   the main job (PROFILE=mini by default; smoke | mini | paper)
#   make test               the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= mini
STAMP := $(VENV)/.installed

.PHONY: env test test-gpu models data data-card smoke smoke-auto check-resume check-faults reproduce-table2 report lab

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

# The CUDA tests (bf16 / fp16 steps, NCCL torchrun, mask phase, resume); `make test` hides the GPU from the rest.
test-gpu: env
	$(PY) -m pytest -m gpu

models: env
	$(PY) -m tinyclip models

lab: env
	$(VENV)/bin/jupyter lab notebooks/

# The embedded data set: fetched with apt-get download / npm pack into data/cache, built into data/$(PROFILE).
data: env
	$(PY) -m tinyclip data build --profile $(PROFILE)

data-card: env
	$(PY) -m tinyclip data card --profile $(PROFILE)

# Table 2 (docs/design.md §6): published reference, paper-scale architectures, mini-scale analogue. Builds the data
# set and trains the profile's teacher and Table 2 recipes first (finished runs are reused).
reproduce-table2: env
	$(PY) -m tinyclip reproduce-table2 --profile $(PROFILE)

# Any notebook: make report NB=table2 [PROFILE=smoke]
report: env
	$(PY) -m tinyclip report $(NB) --profile $(PROFILE)

# OMP_WAIT_POLICY=PASSIVE: with torch's default spin-waiting, 2 threads on 2 shared cores slowed a smoke step 4-9x.
export OMP_WAIT_POLICY ?= PASSIVE

# The smoke profile end to end (data, teacher, 2-stage manual chain, eval); last line JSON.
smoke: env
	$(PY) -m tinyclip smoke

# One uninterrupted smoke run vs one killed with SIGKILL and resumed; last line JSON with max_abs_diff.
check-resume: env
	$(PY) scripts/check_resume.py

# Kill anywhere, lose nothing: 12 SIGKILL trials (inside a manual stage and a mask phase, right after the prune, while
# a checkpoint / the teacher cache / a data shard / a report is written, between stages), each rerun and compared
# with an uninterrupted run (smoke profile, scratch roots); last line JSON with trials, identical, max_abs_diff,
# partial_files.
check-faults: env
	$(PY) scripts/check_faults.py

# The smoke profile's automatic chain (teacher, 2 auto stages, export, reload, eval); last line JSON.
smoke-auto: env
	$(PY) -m tinyclip smoke --auto
