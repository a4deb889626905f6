# make run   - create .venv if missing, install the locked environment, run the embedded SDA pipeline
#              end to end (Prefect + DVC)
# make test  - the same with the test tools (requirements-dev.lock), then the test suite
# make serve - a local Prefect server, serving the deployments of flows/serve.py (Ctrl-C stops)
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PYTHONUNBUFFERED := 1
# Python writes each module's bytecode (.pyc) as it first imports it, in .venv and here: the install
# compiles none (tools/install.sh), and where PYTHONDONTWRITEBYTECODE is set every process would compile
# its imports again (torch, Prefect, DVC: ~20 s of imports instead of ~8 s)
unexport PYTHONDONTWRITEBYTECODE
export PREFECT_LOGGING_EXTRA_LOGGERS ?= sda
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW ?= ignore
# the flow's temporary Prefect server takes ~18 s to start on an idle 2-core machine: Prefect's 20 s
# default fails it on a busy or slower one
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
PORT ?= 4200

.PHONY: help install install-dev lock check run test test-fast repro serve relabel docs clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

install:  ## create .venv and install requirements.lock + the project (again only when they change)
	@tools/install.sh $(VENV) run

install-dev:  ## the same with requirements-dev.lock: the pipeline's packages and the tests' and docs' tools
	@tools/install.sh $(VENV) dev

lock:  ## rewrite the lock files from pyproject.toml (UPGRADE=1: the newest releases)
	@tools/lock.sh $(VENV)

check: install  ## validate params.yaml and your folders in seconds; print what a run will use (sda check)
	$(PY) -m sda.domains.check

run: install  ## the checks, then the whole pipeline (Prefect flow over the DVC stages) and the results
	$(PY) -m sda.domains.check
	$(PY) -m flows.pipeline

repro: install  ## the same work with DVC alone
	$(PY) -m sda.domains.check
	$(VENV)/bin/dvc repro

serve: install  ## Prefect server on 127.0.0.1:$(PORT) + the deployments, served (Ctrl-C stops)
	$(PY) -m flows.serve --port $(PORT)

relabel: install  ## label new images in relabel.inbox (data/inbox) now, without a server
	$(PY) -m flows.relabel

# the suite's workers (pytest-xdist): one per core, at least 2 (a serial run keeps ~1.1 of 2 cores busy: its
# tests wait on processes, servers and DVC), at most 4; TEST_WORKERS=0 runs it in this one process
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 2 ? 2 : n > 4 ? 4 : n )))

test: install-dev  ## run the test suite in a random order on TEST_WORKERS workers (SEED=N replays an order)
	@seed=$${SEED:-$$RANDOM}; echo "test order: SEED=$$seed (pytest-randomly), $(TEST_WORKERS) workers"; \
	$(PY) -m pytest -q -n $(TEST_WORKERS) -p randomly --randomly-seed=$$seed --durations=15

test-fast: install-dev  ## the fast unit tests (tests/unit, not slow): under a minute
	@seed=$${SEED:-$$RANDOM}; echo "test order: SEED=$$seed (pytest-randomly)"; \
	$(PY) -m pytest -q tests/unit -m "not slow" -p randomly --randomly-seed=$$seed

docs: install-dev  ## the documentation site of docs/ on http://127.0.0.1:8000 (mkdocs serve)
	$(VENV)/bin/mkdocs serve

clean: install  ## remove pipeline outputs (not the DVC cache or .venv): the paths of sda/layout.py
	$(PY) -m sda.layout clean
