# The two commands of the README: `make demo` and `make test` (each sets everything up).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := constraints.txt

.PHONY: demo test test-all lint bench install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install -c $(CONSTRAINTS) -e '.[all]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -c $(CONSTRAINTS) -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/wsol demo

lint: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: install-test lint
	$(BIN)/python -m pytest -m "not slow" -n 2 -q

test-all: install-test
	$(BIN)/python -m pytest -n 2 -q

# speed bars of the issues (CPU-heavy, tens of minutes on 2 cores); each prints its measured ratios
bench: install-test
	$(PIP) install -c $(CONSTRAINTS) -e '.[bench]'
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_explain.py --batch 8 --score-images 1 --score-size 112

clean:
	rm -rf $(VENV) runs .pytest_cache
