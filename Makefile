# diffnotes: tests and book.
#
#   make test    lint, unit tests, then every chapter executed once as a test (nbval, two at a time)
#   make book    the book, built strictly and from clean into _build/html from the executed chapters
#   make site-test  headless Chromium opens the built book and checks math, figures, links, console
#
# Each chapter is executed once per CI run: `make test` runs them (nbval) and keeps the executed notebooks in
# _build/executed; `make book` assembles the book from those (MyST-NB's cache mode), and runs the chapters first
# only when they are missing or older than a chapter source or the package.
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
EXEC_DIR := _build/executed
CLAIMS_DIR := _build/claims
EXEC_STAMP := $(EXEC_DIR)/.complete
# pytest-xdist workers (0 = no xdist; with xdist always --dist loadfile). The unit tests and the chapters run on
# both cores, one torch/OpenMP thread per worker: oversubscribed OpenMP threads spin and can make small tensor code
# many times slower (a chapter measured 24 s with one thread against 48 s with two).
UNIT_WORKERS ?= 2
UNIT_THREADS ?= 1
NBVAL_WORKERS ?= 2
NBVAL_THREADS ?= 1
# A cell that runs longer than this fails the chapter (a chapter's whole budget is 60 s).
NBVAL_CELL_TIMEOUT ?= 120
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

.PHONY: help test book clean lint unit nbval venv bench site-test

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
	  python -m pytest $(call xdist,$(UNIT_WORKERS)) --ignore=tests/site $(PYTEST_ARGS) tests

# Each chapter is read by MyST-NB's reader (the book's) into _build/nbval (never next to the sources, where the
# book would see two documents) and executed by nbval, outputs not compared, two chapters at a time with one thread
# each. The plugin book/_ext/chapters.py records each chapter's claims for the Scorecard and writes the executed
# notebooks to _build/executed, from which the book is assembled. No MPLBACKEND: the kernels' inline backend
# keeps the figures as outputs.
nbval: $(STAMP)
	rm -rf $(NBVAL_DIR) $(EXEC_DIR) $(CLAIMS_DIR)
	python book/_ext/chapters.py convert
	DIFFNOTES_CLAIMS_DIR=$(CURDIR)/$(CLAIMS_DIR) PYTHONPATH=$(CURDIR)/book/_ext \
	  OMP_NUM_THREADS=$(NBVAL_THREADS) MKL_NUM_THREADS=$(NBVAL_THREADS) \
	  python -m pytest -p no:cacheprovider -p chapters --nbval-lax --nbval-current-env \
	  --nbval-cell-timeout=$(NBVAL_CELL_TIMEOUT) $(call xdist,$(NBVAL_WORKERS)) $(PYTEST_ARGS) $(NBVAL_DIR)
	python book/_ext/chapters.py times
	touch $(EXEC_STAMP)

# The executed chapters are out of date when a chapter, the package or the pins changed after they ran.
$(EXEC_STAMP): $(shell find book diffnotes -name '*.md' -o -name '*.py' 2>/dev/null) requirements.txt pyproject.toml
	$(MAKE) nbval

# ---------------------------------------------------------------------------------------------- book

# From clean, assembled from the executed chapters: the jupyter-cache is filled from _build/executed and MyST-NB
# reads it (execute_notebooks: cache in _config.yml); a chapter without a matching entry is executed by the build.
# -W turns warnings into errors, -n reports broken references, --keep-going reports all of them;
# nb_execution_raise_on_error (in _config.yml) makes a chapter that raises fail the build.
book: $(STAMP) $(EXEC_STAMP)
	rm -rf _build/html _build/.doctrees _build/jupyter_execute _build/.jupyter_cache
	python book/_ext/chapters.py fill-cache
	OMP_NUM_THREADS=$(NBVAL_THREADS) MKL_NUM_THREADS=$(NBVAL_THREADS) jupyter-book build --all -W -n --keep-going .
	@echo "The book is in _build/html/index.html"

# Headless Chromium (Debian's chromium) opens pages of the built book: math typeset by the bundled MathJax, every
# image loaded, every local link resolving, no console error; screenshots in _build/screenshots. Every built page and
# download is also parsed (tests/site/test_pages.py: captions, line widths, downloads that run). Run after make book.
site-test: $(STAMP)
	@test -f _build/html/index.html || { echo "site-test: build the book first (make book)" >&2; exit 1; }
	python -m pytest -p no:cacheprovider -q tests/site

# ---------------------------------------------------------------------------------------------- benchmark

# diffusers' schedulers against diffnotes' samplers (the default `samplers.sample` and every named sampler) on exact
# scores at 5 and 10 evaluations, and on four DSM-trained networks (not part of `make test`): writes
# _build/bench/report.md, bench_samplers.png and results.json. 107 s measured on an idle 2-core machine (519 s
# while other work ran). `python bench/grid_rule.py` (about a minute) re-derives the default's grid on its own family of
# Gaussian mixtures and fails if DEFAULT_CONFIG disagrees.
bench: $(STAMP)
	python bench/bench_samplers.py

clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis .jupyter_cache
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .ipynb_checkpoints \) -print0 \
	  | xargs -0 -r rm -rf
