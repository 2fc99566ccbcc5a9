# Two commands do all set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
DB ?= demo.duckdb

.PHONY: demo trainticket test lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The main job: testbed → online training and detection → evaluation → report (demo-out/).
demo: $(VENV)/.installed
	$(BIN)/spanomaly demo --out demo-out

# The same method on the real TrainTicket day: ingest, train on its fault-free hours,
# detect, rank, evaluate.
trainticket: $(VENV)/.installed
	bash scripts/trainticket.sh "$(DATA)" "$(DB)"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo.duckdb demo-data demo-model demo-out
