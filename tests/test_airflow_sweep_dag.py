"""The sweep's Airflow DAG (airflow/sweep_dag_template.j2), generated afresh in a copy of
the project: for a small grid (the smoke profile cut to 1 dataset x 2 adaptation methods
x 2 shots x 1 seed) Airflow's DagBag loads it with 4 mapped `adapt` tasks, every node of
the `sweep` pipeline runs in exactly one task, after the tasks that write what it reads,
and only tasks with GPU nodes take the pool. The committed DAG equals a fresh one. A
slower test runs the small grid with `airflow dags test`, after which `kedro run` of the
sweep finds nothing to do.

Needs the `airflow` extra, which `make test` installs; skipped in a venv without it.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests import test_airflow_dag  # skips this module too where Airflow is missing
from tests.conftest import PROJECT_ROOT, copy_project, run_kedro
from tests.test_airflow_dag import (
    COMMITTED_DAGS,
    PACKAGE,
    _airflow_settings,
    _create_dag,
)

airflow_home = test_airflow_dag.airflow_home  # the fixture: $AIRFLOW_HOME in a temporary folder

TEMPLATE = PROJECT_ROOT / "airflow" / "sweep_dag_template.j2"
SMALL = "sweep_small"  # an environment the copy gets: conf/smoke with a small grid
METHODS = ("lora", "bitfit")
SHOTS, SEEDS = [1, 2], [1]


def _small_environment(conf: Path) -> None:
    """conf/smoke with the grid SHOTS x SEEDS, the adaptation METHODS (short trainings)
    and two feature methods, one of them on augmented views."""
    shutil.copytree(conf / "smoke", conf / SMALL)
    (conf / SMALL / "parameters_sweep.yml").write_text(
        yaml.safe_dump({"sweep": {"shots": SHOTS, "seeds": SEEDS}}))
    adaptation = yaml.safe_load((conf / "smoke/parameters_lora.yml").read_text())
    short = {"max_steps": 4, "eval_every": 2, "checkpoint_every": 2}
    adaptation["adaptation_methods"] = {m: {**adaptation["adaptation_methods"][m], **short}
                                        for m in METHODS}
    (conf / SMALL / "parameters_lora.yml").write_text(yaml.safe_dump(adaptation))
    features = yaml.safe_load((conf / "smoke/parameters_feature_methods.yml").read_text())
    features["feature_methods"] = {m: features["feature_methods"][m]
                                   for m in ("linear_probe", "tip_adapter")}
    (conf / SMALL / "parameters_feature_methods.yml").write_text(yaml.safe_dump(features))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project (no conf/local, no data) with the environment SMALL."""
    copy = copy_project(tmp_path_factory.mktemp("project"))
    _small_environment(copy / "conf")
    return copy


@pytest.fixture(scope="module")
def sweep(project):
    """The small environment's `sweep` pipeline and catalog, as `kedro run` builds them."""
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=SMALL) as session:
        catalog = session.load_context().catalog
        return pipelines["sweep"], catalog


@pytest.fixture(scope="module")
def small_dag_file(project, airflow_home) -> Path:
    return _create_dag(project, "sweep", project / "airflow" / "dags", env=SMALL,
                       template=TEMPLATE)


@pytest.fixture(scope="module")
def dag(small_dag_file):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(small_dag_file))
    assert bag.import_errors == {}
    assert list(bag.dags) == [f"{PACKAGE}_{SMALL}_sweep"]
    return bag.dags[f"{PACKAGE}_{SMALL}_sweep"]


def _expanded(task) -> list[dict]:
    """The keyword arguments of each instance of a mapped TaskFlow task."""
    return task.op_kwargs_expand_input.value


def _instances(dag) -> dict[tuple[str, int | None], list[str]]:
    """(task id, map index or None) -> the nodes that task instance runs."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    instances = {}
    for task in dag.tasks:
        if isinstance(task, MappedOperator):
            for index, kwargs in enumerate(_expanded(task)):
                instances[task.task_id, index] = kwargs["node_names"]
        else:
            instances[task.task_id, None] = task.op_kwargs["node_names"]
    return instances


def test_one_mapped_task_per_cell_and_method(dag):
    from airflow.serialization.serialized_objects import DagSerialization

    # As the scheduler sees it: the count of each mapped task, known when parsed.
    scheduled = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    counts = {task_id: scheduled.get_task(task_id).get_parse_time_mapped_ti_count()
              for task_id in ("synthetic.prepare", "synthetic.feature_methods",
                              "synthetic.adapt")}
    cells = len(SHOTS) * len(SEEDS)
    assert counts == {"synthetic.prepare": cells, "synthetic.feature_methods": cells,
                      "synthetic.adapt": 1 * len(METHODS) * cells}  # = 4
    labels = {kwargs["label"] for kwargs in _expanded(dag.get_task("synthetic.adapt"))}
    assert labels == {f"shots_{n}_seed_{s}.{m}" for n in SHOTS for s in SEEDS for m in METHODS}
    assert set(dag.task_ids) == {"synthetic.data", *counts, "aggregate"}


def test_every_node_runs_once_after_the_tasks_that_write_its_inputs(dag, sweep):
    from kedro.io import MemoryDataset

    pipeline, catalog = sweep
    instances = _instances(dag)
    runs = Counter(name for names in instances.values() for name in names)
    assert runs == Counter(node.name for node in pipeline.nodes)  # each node exactly once

    where = {name: instance for instance, names in instances.items() for name in names}
    writer = {output: where[node.name] for node in pipeline.nodes for output in node.outputs}
    for node in pipeline.nodes:
        task_id, index = where[node.name]
        upstream = dag.get_task(task_id).get_flat_relative_ids(upstream=True)
        for name in set(node.inputs) & set(writer):
            if writer[name] == (task_id, index):
                continue  # the same kedro run
            assert writer[name][0] in upstream, (node.name, name, writer[name])
            # read in another process: it must be a file, not memory
            assert not isinstance(catalog.get(name, fallback_to_runtime_pattern=True),
                                  MemoryDataset), (node.name, name)


def test_only_tasks_with_gpu_nodes_take_the_pool(dag, sweep):
    pipeline = sweep[0]
    gpu_nodes = {node.name for node in pipeline.nodes if "gpu" in node.tags}
    pool = _airflow_settings("sweep")["gpu_pool"]
    instances = _instances(dag)
    for task in dag.tasks:
        names = {n for (task_id, _), nodes in instances.items() if task_id == task.task_id
                 for n in nodes}
        assert (task.pool == pool) == bool(names & gpu_nodes), (task.task_id, task.pool)
    assert dag.get_task("synthetic.adapt").pool == pool
    assert dag.get_task("synthetic.feature_methods").pool != pool


def test_limits_come_from_airflow_yml(dag):
    settings = _airflow_settings("sweep")
    assert dag.max_active_tasks == settings["max_active_tasks"]
    assert dag.schedule == settings["schedule"]
    assert dag.max_active_runs == 1


def test_committed_sweep_dag_is_up_to_date(project, airflow_home, tmp_path):
    fresh = _create_dag(project, "sweep", tmp_path, template=TEMPLATE)
    committed = COMMITTED_DAGS / fresh.name
    regenerate = (f"regenerate it with `make airflow-dag AIRFLOW_PIPELINE=sweep` and commit "
                  f"{committed.relative_to(PROJECT_ROOT)} (from conf/base, no conf/local)")
    assert committed.is_file(), f"no committed sweep DAG: {regenerate}"
    diff = list(difflib.unified_diff(committed.read_text().splitlines(),
                                     fresh.read_text().splitlines(),
                                     "committed", "fresh", lineterm=""))
    assert not diff, f"the committed sweep DAG is stale; {regenerate}:\n" + "\n".join(diff[:40])


@pytest.mark.slow
def test_small_sweep_runs_in_airflow_and_leaves_nothing_to_redo(
        small_dag_file, project, airflow_home, tmp_path):
    """`airflow dags test` of the small grid, the pool created as the README says; then
    `kedro run --pipeline sweep` reuses every node the DAG's tasks ran."""
    pool = _airflow_settings("sweep")["gpu_pool"]
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(small_dag_file.parent),
           "CLIP_LORA_PROJECT_PATH": str(project), "KEDRO_DISABLE_TELEMETRY": "1"}
    for command in (["db", "migrate"], ["pools", "set", pool, "1", "one slot per GPU"],
                    ["dags", "test", f"{PACKAGE}_{SMALL}_sweep"]):
        result = subprocess.run([sys.executable, "-m", "airflow", *command], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(list(project.glob("data/08_reporting/*/sweep_*/aggregate.parquet"))) == 1

    run_kedro(project, "run", "--env", SMALL, "--pipeline", "sweep")
    last = json.loads((project / "data/.fingerprints/_last_run.json").read_text())
    assert last["ran"] == [] and last["up_to_date"], last["ran"]
