# Two commands: `make run` (the default pipeline) and `make test` (the test suite).
# Each creates .venv and installs the project on first use, and reuses it afterwards.
# Scheduling: `make airflow-dag` writes the retrain pipeline's Airflow DAG to airflow/dags/
# (`make airflow-dag AIRFLOW_PIPELINE=sweep`: the sweep's, its cells as mapped tasks).
# One venv has everything, the `airflow` extra included: a second one would hold a second
# multi-GB CUDA torch, which filled CI's disk.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# The DAG `make airflow-dag` writes: make airflow-dag AIRFLOW_PIPELINE=data AIRFLOW_ENV=smoke
AIRFLOW_PIPELINE ?= retrain
AIRFLOW_ENV ?= local
# The sweep's DAG maps its cells to Airflow tasks (airflow/sweep_dag_template.j2).
AIRFLOW_TEMPLATE ?= airflow/$(if $(filter sweep,$(AIRFLOW_PIPELINE)),sweep_dag_template,dag_template).j2

.PHONY: run smoke test airflow-dag lint clean-venv

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev,airflow,augment]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kedro run $(ARGS)

smoke: $(STAMP)
	$(VENV)/bin/kedro run --env smoke $(ARGS)

test: export KEDRO_DISABLE_TELEMETRY = 1
test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

# One task per dataset (top-level namespace): one MLflow run each, and a DAG that changes
# only with the dataset list. A retried task redoes only the nodes that did not finish,
# since the fingerprint runner skips the others. tests/test_airflow_dag.py runs the same
# command. The sweep's DAG instead maps every few-shot cell and method to a task of its
# own (airflow/sweep_dag_template.j2; tests/test_airflow_sweep_dag.py).
airflow-dag: export KEDRO_DISABLE_TELEMETRY = 1
airflow-dag: $(STAMP)
	$(VENV)/bin/kedro airflow create --pipelines $(AIRFLOW_PIPELINE) --env $(AIRFLOW_ENV) \
		--group-by namespace --jinja-file $(AIRFLOW_TEMPLATE) --target-dir airflow/dags

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean-venv:
	rm -rf $(VENV)
