# Two set-up commands work on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= quickstart-out

.PHONY: quickstart test lint bench clean system-packages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# TRL 1.16 no longer ships BCOTrainer; the BCO parity test runs TRL 1.0's (files only,
# beside the environment, put first on the path of that one test's subprocess).
$(VENV)/.installed-test: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/trl-1.0 'trl==1.0.0'
	touch $@

quickstart: $(VENV)/.installed
	$(BIN)/prefkit quickstart --out $(OUT)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# Debian's chromium and postgresql for the browser and database tests (see the script).
system-packages:
	@sh .ci/system-packages

test: $(VENV)/.installed-test lint system-packages
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
