# msma — the one interface. `make help` lists the targets.
#
# A fresh clone needs exactly:  make train EXP=quickstart   and   make test
# (both create the virtualenv and install the pinned environment first when it is missing).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.msma-setup-done
EXTRAS ?= dev,cuda,dlib,analysis

EXP ?= quickstart
ARGS ?=
RESUME ?=
CKPT ?=
DATA ?= synthetic
ROOT ?=
SWEEP ?= lr_weights
PYTEST_ARGS ?=

# Tests and tools never touch the network.
TEST_ENV := WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg

.PHONY: help setup assets train test lint format eval sweep notebooks bench clean env-file device-kit device-check

help: ## list the targets
	@echo "msma — make targets (variables: EXP, ARGS, RESUME, CKPT, DATA, ROOT, SWEEP)"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.cfg constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" "setuptools>=69" wheel
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -m pip check
	@touch $(STAMP)

setup: $(STAMP) assets ## create .venv with the pinned environment and convert the embedded face model

assets: $(STAMP) ## convert the embedded ICT-FaceKit model and fetch MediaPipe's face_landmarker.task into $MSMA_HOME (mirror: $MSMA_ASSET_MIRROR)
	$(VENV)/bin/msma assets ict
	$(VENV)/bin/msma assets mediapipe

train: $(STAMP) ## train an experiment: make train EXP=msma_lka [ARGS="key=value ..."] [RESUME=path/to.ckpt]
	$(VENV)/bin/msma train --config-name $(EXP) $(if $(RESUME),resume=$(RESUME),) $(ARGS)

info: $(STAMP) ## what an experiment trains and needs: make info EXP=msma_lka [ARGS="key=value ..."]
	$(VENV)/bin/msma info --config-name $(EXP) $(ARGS)

test: $(STAMP) ## run the test suite (everything not marked gpu)
	$(TEST_ENV) $(PY) -m pytest -m "not gpu" --timeout=900 $(PYTEST_ARGS)

lint: $(STAMP) ## ruff + mypy
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy

format: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts
	$(VENV)/bin/ruff format src tests benchmarks scripts

eval: $(STAMP) ## evaluate: make eval CKPT=path DATA=aflw2000_3d ROOT=/data/AFLW2000 [ARGS=...]
	$(VENV)/bin/msma eval --ckpt $(if $(CKPT),$(CKPT),mean) --data $(DATA) $(if $(ROOT),--root $(ROOT),) $(ARGS)

sweep: $(STAMP) ## create a W&B sweep from experiments/sweeps/$SWEEP.yaml (make sweep SWEEP=lr_weights) and start an agent
	$(PY) -m msma.sweep experiments/sweeps/$(SWEEP).yaml $(ARGS)

notebooks: $(STAMP) ## execute the notebooks headless (outputs go to runs/notebooks/)
	$(TEST_ENV) $(PY) scripts/run_notebooks.py $(ARGS)

bench: $(STAMP) ## run the benchmarks; writes benchmarks/results/*.json and benchmarks/results/README.md
	$(PY) benchmarks/run_all.py $(ARGS)

device-kit: $(STAMP) assets ## gather what a bare CUDA machine lacks into .device/ (wheels for Python 3.12, the face model)
	$(PY) scripts/device_kit.py $(ARGS)

device-check: ## run the device check here (on a CUDA machine: the full check; OUT=folder for the results)
	$(if $(wildcard $(PY)),$(PY),python3) scripts/device_check.py --out $(if $(OUT),$(OUT),runs/device-check) $(ARGS)

env-file: $(STAMP) ## regenerate environment.yml from constraints.txt
	$(PY) scripts/sync_environment.py

clean: ## remove caches (keeps .venv, runs/ and $MSMA_HOME)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
