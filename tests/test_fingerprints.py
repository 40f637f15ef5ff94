"""The fingerprint runner on a small pipeline in a temporary folder: a second run runs
nothing, a changed parameter, input or function reruns that node and what depends on
it, a node that fails leaves no record (so it runs again, and nothing before it), and
the runner says why each node ran."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline import code_digest, fingerprints
from clip_lora_pipeline.datasets import JSONDataset, ParquetDataset
from clip_lora_pipeline.runner import FingerprintRunner

MODULE = '''
CALLS = []


def make(n):
    CALLS.append("make")
    return pd.DataFrame({"x": list(range(n))})


def _double(frame):
    return frame * 2


def double(frame):
    CALLS.append("double")
    return _double(frame)


def total(frame, scale):
    CALLS.append("total")
    return {"total": int(frame["x"].sum()) * scale}
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "fp_nodes.py").write_text("import pandas as pd\n" + textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(code_digest, "PACKAGE", "fp_nodes")
    yield tmp_path
    sys.modules.pop("fp_nodes", None)


def _run(root, params=None, fail=None):
    module = importlib.import_module("fp_nodes")
    code_digest._code_of.cache_clear()
    code_digest._imported_modules.cache_clear()
    code_digest._module_digest.cache_clear()
    module.CALLS.clear()
    double = module.double
    if fail:
        def double(frame):
            raise KeyboardInterrupt  # a kill mid-node
    catalog = DataCatalog({
        "numbers": ParquetDataset(filepath=str(root / "numbers.parquet")),
        "doubled": ParquetDataset(filepath=str(root / "doubled.parquet")),
        "summary": JSONDataset(filepath=str(root / "summary.json")),
    })
    values = {"n": 4, "scale": 1, **(params or {})}
    for name, value in values.items():
        catalog[f"params:{name}"] = value
    pipeline = Pipeline([
        Node(module.make, "params:n", "numbers", name="make"),
        Node(double, "numbers", "doubled", name="double"),
        Node(module.total, ["doubled", "params:scale"], "summary", name="total"),
    ])
    FingerprintRunner(records=root / "records").run(pipeline, catalog)
    last = json.loads((root / "records" / "_last_run.json").read_text())
    return module.CALLS, last


def test_a_second_run_runs_nothing(project, caplog):
    calls, _ = _run(project)
    assert calls == ["make", "double", "total"]
    with caplog.at_level("INFO"):
        calls, last = _run(project)
    assert calls == [] and last["ran"] == [] and last["reused"] == ["make", "double", "total"]
    assert last["up_to_date"] and sorted(Path(p).name for p in last["files"]) == [
        "doubled.parquet", "numbers.parquet", "summary.json"]
    assert "Nothing to run: all 3 nodes are up to date" in caplog.text


def test_a_changed_parameter_reruns_its_node_and_what_depends_on_it(project, caplog):
    _run(project)
    with caplog.at_level("INFO"):
        calls, _ = _run(project, {"scale": 3})
    assert calls == ["total"]
    assert "Running total: parameter params:scale changed" in caplog.text
    assert json.loads((project / "summary.json").read_text()) == {"total": 36}
    calls, _ = _run(project, {"n": 5, "scale": 3})
    assert calls == ["make", "double", "total"]


def test_an_unchanged_result_stops_the_rerun_early(project):
    _run(project)
    (project / "numbers.parquet").touch()  # same content, new mtime
    calls, _ = _run(project)
    assert calls == []
    pd.DataFrame({"x": [9]}).to_parquet(project / "numbers.parquet")  # edited by hand
    calls, _ = _run(project)
    assert calls == ["make"]  # remade as it was: what depends on it is still valid
    assert pd.read_parquet(project / "numbers.parquet")["x"].tolist() == [0, 1, 2, 3]


def test_an_edited_function_reruns_it_and_what_depends_on_it(project, caplog):
    _run(project)
    source = project / "fp_nodes.py"
    source.write_text(source.read_text().replace("return frame * 2", "return frame * 3"))
    sys.modules.pop("fp_nodes")
    with caplog.at_level("INFO"):
        calls, _ = _run(project)
    assert calls == ["double", "total"]  # the helper it calls changed; total's input too
    assert "Running double: its code changed" in caplog.text
    assert "Running total: input doubled changed" in caplog.text


def test_a_killed_node_runs_again_and_nothing_before_it(project):
    _run(project)
    with pytest.raises(KeyboardInterrupt):
        _run(project, {"n": 6}, fail="double")
    assert not (project / "records" / "double.json").exists()
    calls, _ = _run(project, {"n": 6})
    assert calls == ["double", "total"]


def test_a_recompute_runs_everything(project, monkeypatch):
    _run(project)
    monkeypatch.setenv("CLIP_LORA_RECOMPUTE", "1")
    calls, _ = _run(project)
    assert calls == ["make", "double", "total"]


def test_a_folder_a_parameter_names_is_part_of_the_fingerprint(project):
    folder = project / "images"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    hashes = fingerprints.FileHashes(project / "files.json")
    first = hashes.folder(folder)
    (folder / "a.txt").touch()
    assert hashes.folder(folder) == first  # same content
    (folder / "b.txt").write_text("b")
    assert hashes.folder(folder) != first
    assert list(fingerprints.folders_named({"dataset": {"root": str(folder)}})) == [str(folder)]
