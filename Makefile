# One command per job on a fresh machine: each target creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test
DEMO_STAMP := $(VENV)/.installed-demo
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install test test-all lint format demo notebook docs bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# the demo needs minidiff and the embedded digits only
$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e ".[digits]"
	touch $(DEMO_STAMP)

# the site needs MkDocs and its plugins only (the API reference reads the source, it imports nothing)
$(DOCS_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

# the tests add diffusers, datasets, pytest, hypothesis and ruff
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP) $(DEMO_STAMP) $(DOCS_STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The test command (CI runs exactly this): lint, then every test that is neither slow nor CUDA-only.
test: lint
	$(BIN)/python -m pytest -m "not slow" -q

# Everything, slow tests included (gpu tests skip themselves without CUDA).
test-all: lint
	$(BIN)/python -m pytest -q

# The README's main job: train the tiny preset on the embedded digits and write out/demo/.
demo: $(DEMO_STAMP)
	$(BIN)/minidiff demo --out out/demo

# Run docs/tutorial.ipynb top to bottom and save it with its outputs (3.5 to 7 minutes on 2 CPU cores).
notebook: $(STAMP)
	$(BIN)/python docs/run_tutorial.py

# The documentation site: the guide pages, the API reference from the docstrings and the notebook, into site/.
docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf out site .pytest_cache .ruff_cache
