# Two commands: `make run` (the default pipeline) and `make test` (the test suite).
# Each creates .venv and installs the project on first use, and reuses it afterwards.
# Scheduling: `make airflow-dag` writes the retrain pipeline's Airflow DAG to airflow/dags/
# with a second venv, .venv-airflow, that has the `airflow` extra (Airflow caps packages,
# such as fastapi, below the versions .venv gets).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
# The DAG `make airflow-dag` writes: make airflow-dag AIRFLOW_PIPELINE=data AIRFLOW_ENV=smoke
AIRFLOW_PIPELINE ?= retrain
AIRFLOW_ENV ?= local

.PHONY: run smoke test test-airflow airflow-venv airflow-dag lint clean-venv

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# pytest only for tests/test_airflow_dag.py; the rest of [dev] is not needed there.
$(AIRFLOW_STAMP): pyproject.toml
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install --quiet -e ".[airflow]" "pytest>=8"
	touch $(AIRFLOW_STAMP)

run: $(STAMP)
	$(VENV)/bin/kedro run $(ARGS)

smoke: $(STAMP)
	$(VENV)/bin/kedro run --env smoke $(ARGS)

# The whole suite also runs the Airflow test with .venv-airflow, where that venv exists.
test: export KEDRO_DISABLE_TELEMETRY = 1
test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)
ifeq ($(ARGS),)
	@if [ -x $(AIRFLOW_VENV)/bin/python ]; then $(MAKE) --no-print-directory test-airflow; \
	else echo "Airflow test not run: no $(AIRFLOW_VENV) (make airflow-venv creates it)"; fi
endif

test-airflow: export KEDRO_DISABLE_TELEMETRY = 1
test-airflow: $(AIRFLOW_STAMP)
	$(AIRFLOW_VENV)/bin/python -m pytest tests/test_airflow_dag.py $(ARGS)

airflow-venv: $(AIRFLOW_STAMP)

# One task per dataset (top-level namespace): one MLflow run each, and a DAG that changes
# only with the dataset list. A retried task redoes only the nodes that did not finish,
# since the fingerprint runner skips the others. tests/test_airflow_dag.py runs the same
# command.
airflow-dag: export KEDRO_DISABLE_TELEMETRY = 1
airflow-dag: $(AIRFLOW_STAMP)
	$(AIRFLOW_VENV)/bin/kedro airflow create --pipelines $(AIRFLOW_PIPELINE) --env $(AIRFLOW_ENV) \
		--group-by namespace --jinja-file airflow/dag_template.j2 --target-dir airflow/dags

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean-venv:
	rm -rf $(VENV) $(AIRFLOW_VENV)
