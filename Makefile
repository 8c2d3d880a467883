# `make run` and `make test` are all the set-up a machine with python3 needs: both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@
	@echo "installed: $(BIN)/followup"

run: install
	$(BIN)/followup dev

test: install
	$(BIN)/python -m pytest

# A benchmark, not a test: private redis-servers, followup against its baselines; prints a table,
# writes bench/results/<timestamp>.json and rewrites docs/BENCHMARKS.md (see that file).
bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
