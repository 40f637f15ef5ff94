"""The Airflow DAG of the scheduled pipeline, generated afresh from the current project
(kedro-airflow with airflow/dag_template.j2 and conf/base/airflow.yml) in a temporary
copy, so what is checked is never stale: Airflow loads it without import errors, with
one task per top-level namespace, the schedule and limits of airflow.yml, and the
committed airflow/dags/ file equals it. A slower test runs the smoke environment's DAG
with `airflow dags test`.

Needs the `airflow` extra, which `make test` installs; skipped in a venv without it.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, copy_project, run_kedro

# Not importorskip: importing Airflow writes to $AIRFLOW_HOME (~/airflow by default),
# which a fixture points elsewhere first. Without Airflow, the project's airflow/ folder
# is found instead, as a namespace package (no origin).
_airflow = importlib.util.find_spec("airflow")
if _airflow is None or _airflow.origin is None:
    pytest.skip("Airflow is not installed in this venv: pip install -e '.[airflow]' "
                "(make test installs it)", allow_module_level=True)

# The scheduled pipeline, whose DAG is committed in airflow/dags/ (make airflow-dag).
PIPELINE = "retrain"
# Checked instead while PIPELINE is not registered (then nothing committed is compared).
FALLBACK_PIPELINE = "data"
PACKAGE = "clip_lora_pipeline"
TEMPLATE = PROJECT_ROOT / "airflow" / "dag_template.j2"
COMMITTED_DAGS = PROJECT_ROOT / "airflow" / "dags"


def _create_dag(project: Path, pipeline: str, target: Path, env: str = "local",
                template: Path = TEMPLATE) -> Path:
    """`make airflow-dag`'s command, run in ``project``; the file it wrote."""
    run_kedro(project, "airflow", "create", "--pipelines", pipeline, "--env", env,
              "--group-by", "namespace", "--jinja-file", str(template),
              "--target-dir", str(target))
    infix = "" if env == "local" else f"_{env}"
    return target / f"{PACKAGE}{infix}_{pipeline}_dag.py"


def _registered_pipelines(project: Path) -> dict:
    """The project's pipelines as `kedro run` in ``project`` builds them."""
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="local") as session:
        session.load_context()  # the registry reads the parameters of this session
        return dict(pipelines)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project (code and configuration, no conf/local, no data)."""
    return copy_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("airflow_home")
        patch.setenv("AIRFLOW_HOME", str(home))
        patch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        yield home


@pytest.fixture(scope="module")
def generated(project, airflow_home):
    """(pipeline name, its Kedro pipeline, the DAG file generated in the copy)."""
    registered = _registered_pipelines(project)
    name = PIPELINE if PIPELINE in registered else FALLBACK_PIPELINE
    return name, registered[name], _create_dag(project, name, project / "airflow" / "dags")


@pytest.fixture(scope="module")
def dag(generated):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(generated[2]))
    assert bag.import_errors == {}
    assert len(bag.dags) == 1, sorted(bag.dags)
    return next(iter(bag.dags.values()))


def _airflow_settings(pipeline: str) -> dict:
    """conf/base/airflow.yml as kedro-airflow reads it: `default`, then the pipeline's own."""
    settings = yaml.safe_load((PROJECT_ROOT / "conf/base/airflow.yml").read_text())
    return {**settings.get("default", {}), **settings.get(pipeline, {})}


def _group(node) -> str:
    """The task of a node: its top-level namespace (or its name, without one), as
    Airflow's task id."""
    from slugify import slugify

    return slugify(node.namespace.split(".")[0] if node.namespace else node.name)


def test_dag_is_named_after_its_pipeline(generated, dag):
    assert dag.dag_id == f"{PACKAGE}_{generated[0]}"


def test_one_task_per_namespace_in_the_pipeline_order(generated, dag):
    pipeline = generated[1]
    assert set(dag.task_ids) == {_group(node) for node in pipeline.nodes}
    for node, parents in pipeline.node_dependencies.items():
        task = dag.get_task(_group(node))
        for parent in parents:
            if _group(parent) != task.task_id:
                assert _group(parent) in task.upstream_task_ids, (parent.name, node.name)


def test_schedule_and_limits_come_from_airflow_yml(generated, dag):
    settings = _airflow_settings(generated[0])
    assert dag.schedule == settings["schedule"]
    assert dag.max_active_tasks == settings["max_active_tasks"]
    assert dag.catchup is settings["catchup"]
    assert dag.default_args["retries"] == settings["retries"]
    assert dag.max_active_runs == 1  # the template's own: two runs would write the same files


def test_committed_dag_is_up_to_date(generated):
    name, _, fresh = generated
    if name != PIPELINE:
        pytest.skip(f"pipeline {PIPELINE!r} is not registered: no committed DAG to compare")
    committed = COMMITTED_DAGS / fresh.name
    regenerate = (f"regenerate it with `make airflow-dag` and commit "
                  f"{committed.relative_to(PROJECT_ROOT)} (the test's copy has no conf/local: "
                  "the committed DAG is conf/base's)")
    assert committed.is_file(), f"no committed DAG: {regenerate}"
    diff = list(difflib.unified_diff(committed.read_text().splitlines(),
                                     fresh.read_text().splitlines(),
                                     "committed", "fresh", lineterm=""))
    assert not diff, f"the committed DAG is stale; {regenerate}:\n" + "\n".join(diff[:40])


@pytest.mark.slow
def test_smoke_dag_runs_in_airflow(generated, project, airflow_home, tmp_path):
    """The smoke environment's DAG, written outside the project (so it finds the project
    through CLIP_LORA_PROJECT_PATH), run by `airflow dags test` against a fresh
    SQLite metadata database."""
    name = generated[0]
    dag_file = _create_dag(project, name, tmp_path / "dags", env="smoke")
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(dag_file.parent),
           "CLIP_LORA_PROJECT_PATH": str(project), "KEDRO_DISABLE_TELEMETRY": "1"}
    for command in (["db", "migrate"], ["dags", "test", f"{PACKAGE}_smoke_{name}"]):
        result = subprocess.run([sys.executable, "-m", "airflow", *command], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the tasks ran in the project (its relative paths), not in the working directory
    assert (project / "data/.fingerprints/_last_run.json").is_file()
    assert not (tmp_path / "data").exists()
