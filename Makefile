# One command sets up everything and does the job:
#   make demo   -> virtual environment + install + the main job on bundled digits
#   make test   -> virtual environment + install + lint + the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pyrocollapse-installed
OUT ?= runs/demo

.PHONY: setup demo test test-fast lint docs bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/pyrocollapse run --dataset digits --prior standard --elbo annealed --out $(OUT)

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not notebooks"

# the documentation site (API reference, guides, tutorials executed in smoke mode), offline
docs: setup
	$(BIN)/sphinx-build -W --keep-going -b html docs/site docs/_build/html

bench: setup
	$(BIN)/python benchmarks/training.py

clean:
	rm -rf $(VENV) runs build docs/_build *.egg-info
