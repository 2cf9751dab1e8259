# Newcomer commands: `make demo` runs the example app, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: test lint typecheck pytest demo venv clean bench

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

test: venv
	bash scripts/ensure-redis.sh
	$(BIN)/ruff check .
	$(BIN)/mypy flask_mcp_auth
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy flask_mcp_auth

pytest: venv
	bash scripts/ensure-redis.sh
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

demo: venv
	$(BIN)/python -m example_app

bench: venv
	bash scripts/ensure-redis.sh
	$(BIN)/python bench/identity.py
	$(BIN)/python bench/chain.py
	$(BIN)/python bench/outgoing.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/refresh.py
	$(BIN)/python bench/keyspace.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
