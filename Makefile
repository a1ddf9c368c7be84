# docray: two commands on a fresh machine with nothing but python3.
#   make quickstart   create .venv, install, run the main job on embedded local Ray (CPU)
#   make test         create/update .venv, install, run the test suite
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.docray-installed
# This machine's pip config names local index folders that may not exist; pip warns once per package.
QUIET_PIP := grep -v "^WARNING: Location 'file://" || true

.PHONY: help install quickstart quickstart-object-storage models test test-slow test-faults test-e2e test-multinode test-docs bench clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install docray with its dependencies (torch pinned first)
	@$(BIN)/python -c 'from docray.compat import install_pth; install_pth()'

# torch first, from its own pin (CPU build here, CUDA build on a GPU host); constraints.txt then keeps
# every later install from replacing it. `docray doctor` proves the model stack imports and runs.
# `install` then writes docray-compat.pth into the venv (every time: cheap, idempotent), so the
# torchvision fix and Ray's token mode apply at interpreter start, before a script's first import.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(BIN)/python -m pip install torch==2.13.0 2>&1 | { $(QUIET_PIP); }
	set -o pipefail; $(BIN)/python -m pip install -c constraints.txt -e ".[dev]" 2>&1 | { $(QUIET_PIP); }
	$(BIN)/docray doctor
	@touch $(STAMP)

quickstart: install  ## the main job: local Ray, synthetic corpus through Ray, storage, summary
	$(BIN)/python -m cluster.quickstart

quickstart-object-storage: install  ## the quickstart on a local home, then on s3:// (local S3 server), compared (~21 min; DOCRAY_TINY=1 ~15 min)
	$(BIN)/python -m tests.quickstart_s3

models: install  ## every reference model from scratch, each step a Ray job; resumes (configs/models/standard.yaml)
	$(BIN)/docray models build --profile standard

test: install  ## the default test suite (no slow, gpu, fault, e2e, multinode or docs tests); < 20 min on 2 cores
	$(BIN)/python -m pytest

test-slow: install  ## the slow tests too
	$(BIN)/python -m pytest -m "not gpu"

test-faults: install  ## the fault suite: kills workers, actors, a replica, a driver; restarts Postgres (~3 min)
	$(BIN)/python -m pytest -m faults tests/test_faults.py

test-e2e: install  ## end-to-end training runs: every method on an imported dataset, a seventh type, resumes (~8 min)
	$(BIN)/python -m pytest -m e2e

test-multinode: install  ## two Ray nodes on one host: train on one, serve on the other, rescan on both (~2 min)
	$(BIN)/python -m pytest -m multinode tests/test_multinode.py

test-docs: install  ## every command of the README and docs/, run in order at tiny size (DOCRAY_TINY=1)
	$(BIN)/python -m pytest -m docs tests/test_doc_commands_run.py

bench: install  ## every benchmark against the registered models (make models first) -> benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks.run_all --profile standard

clean:  ## remove the virtual environment and caches (not DOCRAY_HOME)
	rm -rf $(VENV) .pytest_cache build *.egg-info
