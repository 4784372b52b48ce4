# diffnotes: tests and book.
#
#   make test    lint, unit tests, then every chapter notebook run as a test (nbval)
#   make book    the book, built strictly and from clean into _build/html
#   make clean   remove build outputs (keeps .venv)
#
# Both create .venv on first use (Python 3.11 or newer: `make PYTHON=python3.12 test` to choose one), install the
# pinned requirements and the package in editable mode, and do not reinstall until requirements.txt or
# pyproject.toml change.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
.NOTPARALLEL:

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
NBVAL_DIR := _build/nbval
# pytest-xdist workers (0 = no xdist; with xdist always --dist loadfile). The unit tests run on both cores, one
# torch/OpenMP thread per worker: oversubscribed OpenMP threads spin and can make small tensor code many times
# slower. The chapters run one after another with the default threads, as in the book build (and as their time
# budgets are measured).
UNIT_WORKERS ?= 2
UNIT_THREADS ?= 1
NBVAL_WORKERS ?= 0
PYTEST_ARGS ?=

export PATH := $(BIN):$(PATH)
# OpenMP threads (torch) that wait by spinning turn any competition for the CPU into stalls: a chapter measured at
# 24 s ran 180-500 s on a busy 2-core machine with the default policy. Passive waiting keeps the speed on an idle
# machine and removes the stalls. Applies to the tests and to the kernels the book build starts.
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY

# The chapter notebooks: every MyST source under book/ whose front matter has a `jupytext` key.
find_chapters = find book -name '*.md' -not -path '*/.ipynb_checkpoints/*' -not -path 'book/_ext/*' -print0 \
	| sort -z \
	| xargs -0 -r awk 'FNR == 1 { head = ($$0 ~ /^---[ \t]*$$/); next }; \
	                   head && /^---[ \t]*$$/ { head = 0 }; \
	                   head && /^jupytext[ \t]*:/ { print FILENAME }'

xdist = $(if $(filter-out 0,$(1)),-n $(1) --dist loadfile)

.PHONY: help test book clean lint unit nbval venv bench

help:
	@echo "make test    lint (ruff), unit tests (pytest tests), every chapter as a notebook test (nbval)"
	@echo "make book    build the book strictly, from clean, into _build/html"
	@echo "make clean   remove _build and caches (keeps .venv)"
	@echo "The first run creates .venv with $(PYTHON) (3.11+) and installs requirements.txt and diffnotes."

# ---------------------------------------------------------------------------------------------- environment

venv: $(STAMP)

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null || { \
	  echo "error: '$(PYTHON)' is not Python 3.11 or newer ($$($(PYTHON) --version 2>&1 || echo not found))." >&2; \
	  echo "       diffnotes needs Python 3.11+; choose one with e.g. 'make PYTHON=python3.12 test'." >&2; \
	  exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt pyproject.toml | $(VENV)/bin/python
	@$(VENV)/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || { \
	  echo "error: $(VENV) uses $$($(VENV)/bin/python --version); diffnotes needs Python 3.11+." >&2; \
	  echo "       Remove $(VENV) and run again with PYTHON set to a Python 3.11+ interpreter." >&2; \
	  exit 1; }
	$(VENV)/bin/python -m pip install -r requirements.txt
	$(VENV)/bin/python -m pip install -e . --no-deps
	touch $@

# ---------------------------------------------------------------------------------------------- tests

test: lint unit nbval

lint: $(STAMP)
	ruff check diffnotes tests book/_ext bench

# Neither the unit tests nor the notebook tests record claims for the Scorecard (only the book build does).
unit: $(STAMP)
	MPLBACKEND=Agg DIFFNOTES_CLAIMS_DIR= OMP_NUM_THREADS=$(UNIT_THREADS) MKL_NUM_THREADS=$(UNIT_THREADS) \
	  python -m pytest $(call xdist,$(UNIT_WORKERS)) $(PYTEST_ARGS) tests

# Each chapter is converted to .ipynb in a scratch folder that mirrors book/ (never next to the sources,
# where the book would see two documents), then executed by nbval, outputs not compared.
nbval: $(STAMP)
	rm -rf $(NBVAL_DIR)
	@chapters="$$($(find_chapters))"; \
	if [ -z "$$chapters" ]; then echo "nbval: no chapter notebook under book/"; exit 0; fi; \
	for md in $$chapters; do \
	  out="$(NBVAL_DIR)/$${md%.md}.ipynb"; mkdir -p "$$(dirname "$$out")"; \
	  echo "jupytext --to ipynb $$md -> $$out"; \
	  jupytext --quiet --to ipynb --output "$$out" "$$md"; \
	done; \
	echo "MPLBACKEND=Agg python -m pytest --nbval-lax --nbval-current-env $(call xdist,$(NBVAL_WORKERS)) $(NBVAL_DIR)"; \
	MPLBACKEND=Agg DIFFNOTES_CLAIMS_DIR= python -m pytest -p no:cacheprovider --nbval-lax --nbval-current-env \
	  $(call xdist,$(NBVAL_WORKERS)) $(PYTEST_ARGS) $(NBVAL_DIR)

# ---------------------------------------------------------------------------------------------- book

# From clean: the execution cache keys on cell source, not on the package, so nothing is reused.
# -W turns warnings into errors, -n reports broken references, --keep-going reports all of them;
# nb_execution_raise_on_error (in _config.yml) makes a chapter that raises fail the build.
book: $(STAMP)
	rm -rf _build/html _build/.doctrees _build/jupyter_execute _build/claims
	jupyter-book build --all -W -n --keep-going .
	@echo "The book is in _build/html/index.html"

# ---------------------------------------------------------------------------------------------- benchmark

# diffusers' schedulers against diffnotes' samplers on one exact score (not part of `make test`): writes
# _build/bench/report.md, bench_samplers.png and results.json. About 2-4 minutes on 2 cores.
bench: $(STAMP)
	python bench/bench_samplers.py

clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis .jupyter_cache
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .ipynb_checkpoints \) -print0 \
	  | xargs -0 -r rm -rf
