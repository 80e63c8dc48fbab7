# make setup | make train [ARGS="hydra overrides"] | make test | make lint | make bench[-quick] | make notebook
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup train test lint bench bench-quick notebook

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# PYTHONWARNINGS: setuptools' notes on how editable installs work are not for users.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(BIN)/lenet-train $(ARGS)

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

bench: setup  # epoch time of the lesson's loop and lenet-train's variants, time to 99%, one epoch, the whole command, .onnx predict, a sweep's memory
	$(BIN)/python benchmarks/epoch_time.py --variant "B NCHW=model.channels_last=false"
	$(BIN)/python benchmarks/time_to_accuracy.py
	$(BIN)/python benchmarks/one_epoch.py
	$(BIN)/python benchmarks/whole_command.py
	$(BIN)/python benchmarks/onnx_predict.py
	$(BIN)/python benchmarks/sweep_memory.py

bench-quick: setup  # both in quick mode (a tenth of the data, one seed): under 2 minutes
	$(BIN)/python benchmarks/epoch_time.py --quick
	$(BIN)/python benchmarks/time_to_accuracy.py --quick

notebook: setup  # Jupyter Lab on the lesson retold (installs the notebook extra first)
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e ".[notebook]"
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/lenet5_mnist.ipynb
