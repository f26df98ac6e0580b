# tinyclip-repro: the user interface. `make` (or `make help`) lists every target. Every target depends on `env`,
# which does nothing when .venv is current. PROFILE=smoke|mini|paper (mini by default).
#   make reproduce-table2   the main job        make test   the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= mini
STAMP := $(VENV)/.installed
NOTEBOOKS := table2 ablation_affinity ablation_inheritance redundancy teacher_choice multistage training_cost

.DEFAULT_GOAL := help
.PHONY: help env browser test test-gpu models data data-card smoke smoke-auto check-resume check-faults report inventory readme-claims \
	reproduce-all reproduce-table2 reproduce-ablation_affinity reproduce-ablation_inheritance \
	reproduce-redundancy reproduce-teacher_choice reproduce-multistage reproduce-training_cost lab

# help: `## text` after a target is its line in `make help` (wall times measured on the 2-core CPU, mini profile)
help:
	@echo "tinyclip-repro — PROFILE=smoke|mini|paper (default mini); wall times: mini profile, 2-core CPU, measured"
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-32s %s\n", $$1, $$2 }'

env: $(STAMP) ## the virtual environment (.venv): torch from this machine's disk, pins from PyPI (2 min)

# torch 2.14.1 / torchvision 0.29.1 are served from this machine's disk; every other pin comes from PyPI.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# Headless Chromium + ChromeDriver (Debian) for the report-site test; installed once, when missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -q && apt-get install -y -q chromium chromium-driver; }

test: env browser ## the test suite, what CI runs (browser test included; about 5 min)
	TINYCLIP_REQUIRE_BROWSER=1 $(PY) -m pytest

# The CUDA tests (bf16 / fp16 steps, NCCL torchrun, mask phase, resume); `make test` hides the GPU from the rest.
test-gpu: env ## the CUDA tests (needs a GPU)
	$(PY) -m pytest -m gpu

models: env ## the TinyCLIP architectures: parameters, MACs, published references
	$(PY) -m tinyclip models

lab: env ## JupyterLab on notebooks/
	$(VENV)/bin/jupyter lab notebooks/

# The embedded data set: fetched with apt-get download / npm pack into data/cache, built into data/$(PROFILE).
data: env ## build the embedded data set (mini: about 5 min alone, 11 min beside other work)
	$(PY) -m tinyclip data build --profile $(PROFILE)

data-card: env ## the data card: sources, licences, counts, content digest
	$(PY) -m tinyclip data card --profile $(PROFILE)

# Table 2: published reference, paper-scale architectures, mini-scale analogue over seeds. Builds the data set and
# trains the profile's teacher and Table 2 recipes first (finished runs are reused, interrupted ones resume).
reproduce-table2: env ## Table 2 + C8, C9 (data, teacher, 3 recipes x 3 seeds, report; about 2 h 40 min cold, render 3 min)
	$(PY) -m tinyclip reproduce-table2 --profile $(PROFILE)

reproduce-ablation_affinity: env ## C1: interaction modes, 5 losses x 3 seeds on one S50 student
	$(PY) -m tinyclip data build --profile $(PROFILE)
	$(PY) -m tinyclip report ablation_affinity --profile $(PROFILE)

reproduce-ablation_inheritance: env ## C2, C3: inherited vs random init, auto vs manual (3 mask phases) x 3 seeds; shares Table 2 runs
	$(PY) -m tinyclip data build --profile $(PROFILE)
	$(PY) -m tinyclip report ablation_inheritance --profile $(PROFILE)

reproduce-redundancy: env ## C4: layer similarity, depth vs width removal on the teacher, learned allocation (3 auto seeds)
	$(PY) -m tinyclip data build --profile $(PROFILE)
	$(PY) -m tinyclip report redundancy --profile $(PROFILE)

reproduce-teacher_choice: env ## C5: S50 inherited/random x mimicking the mini/LiT teacher, 3 seeds; shares C1's runs
	$(PY) -m tinyclip data build --profile $(PROFILE)
	$(PY) -m tinyclip report teacher_choice --profile $(PROFILE)

reproduce-multistage: env ## C6: chain to 25 % vs one stage, manual and auto x 3 seeds; shares Table 2 runs
	$(PY) -m tinyclip data build --profile $(PROFILE)
	$(PY) -m tinyclip report multistage --profile $(PROFILE)

reproduce-training_cost: env ## C7: accuracy vs samples seen, inherited vs from-scratch S50, 624 steps x 2 arms x 3 seeds (about 2.3 h estimated, teacher trained)
	$(PY) -m tinyclip data build --profile $(PROFILE)
	$(PY) -m tinyclip report training_cost --profile $(PROFILE)

# Every notebook in turn; a failing one is marked failed in the index, the others still run, make exits non-zero.
reproduce-all: env ## every notebook (runs shared between notebooks are trained once)
	@failed=""; for nb in $(NOTEBOOKS); do $(MAKE) --no-print-directory reproduce-$$nb || failed="$$failed $$nb"; done; \
	$(PY) -m tinyclip inventory --profile $(PROFILE) >/dev/null; \
	if [ -n "$$failed" ]; then echo "failed notebooks:$$failed (see reports/index.html)"; exit 1; fi

# Re-render every report from finished runs (trains nothing; arms that have not finished are left out).
report: env ## re-render every report from finished runs (minutes), then the inventory
	@failed=""; for nb in $(NOTEBOOKS); do $(PY) -m tinyclip report $$nb --profile $(PROFILE) -p train False || \
		failed="$$failed $$nb"; done; $(PY) -m tinyclip inventory --profile $(PROFILE) >/dev/null; \
		if [ -n "$$failed" ]; then echo "failed notebooks:$$failed"; exit 1; fi

# Every run the notebooks read, counted once; reports/inventory.json and the index's reproduce-all projection.
inventory: env ## the runs behind all notebooks: finished, unfinished, projected reproduce-all time (about 1 min)
	$(PY) -m tinyclip inventory --profile $(PROFILE)

readme-claims: env ## copy the claims table of reports/claims.json into README.md (seconds)
	$(PY) -c "from tinyclip.site import sync_readme_claims; sync_readme_claims('README.md', '$(PROFILE)')"

# OMP_WAIT_POLICY=PASSIVE: with torch's default spin-waiting, 2 threads on 2 shared cores slowed a smoke step 4-9x.
export OMP_WAIT_POLICY ?= PASSIVE

# The smoke profile end to end (data, teacher, 2-stage manual chain, eval); last line JSON.
smoke: env ## the smoke profile end to end (data, teacher, 2-stage chain, eval; under 2 min)
	$(PY) -m tinyclip smoke

# One uninterrupted smoke run vs one killed with SIGKILL and resumed; last line JSON with max_abs_diff.
check-resume: env ## SIGKILL a smoke run and resume it: max_abs_diff against an uninterrupted run
	$(PY) scripts/check_resume.py

# Kill anywhere, lose nothing: 12 SIGKILL trials (inside a manual stage and a mask phase, right after the prune, while
# a checkpoint / the teacher cache / a data shard / a report is written, between stages), each rerun and compared
# with an uninterrupted run (smoke profile, scratch roots); last line JSON with trials, identical, max_abs_diff,
# partial_files.
check-faults: env ## 12 SIGKILL trials at named points, each rerun and compared (JSON)
	$(PY) scripts/check_faults.py

# The smoke profile's automatic chain (teacher, 2 auto stages, export, reload, eval); last line JSON.
smoke-auto: env ## the smoke profile's automatic chain end to end (under 2 min)
	$(PY) -m tinyclip smoke --auto
