# make setup | make train [ARGS="hydra overrides"] | make test | make lint
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup train test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(BIN)/lenet-train $(ARGS)

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest
