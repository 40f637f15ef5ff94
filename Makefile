# Two commands: `make run` (the default pipeline) and `make test` (the test suite).
# Each creates .venv and installs the project on first use, and reuses it afterwards.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run smoke test lint clean-venv

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kedro run $(ARGS)

smoke: $(STAMP)
	$(VENV)/bin/kedro run --env smoke $(ARGS)

test: export KEDRO_DISABLE_TELEMETRY = 1
test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean-venv:
	rm -rf $(VENV)
