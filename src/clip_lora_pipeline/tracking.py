"""What kedro-mlflow does not log by itself, into the MLflow run it opens for each
``kedro run`` (its hook logs the parameters, flattened, per conf/base/mlflow.yml):

- the few-shot cell (``shots``, ``few_shot_seed``), which nodes get bound, not as
  parameters;
- every method's metrics, as ``<dataset>.<cell>.<method>_metrics.<name>``;
- each report, as an artefact under ``reports/``;
- each trained adapter or feature-method model, registered as a version of
  ``<dataset>-<method>`` with its inputs' content hashes (the data it was trained on)
  and the node that made it.

Nothing is logged when no MLflow run is active (tracking disabled for the pipeline).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.registry import Registry, file_sha256, registered_name

logger = logging.getLogger(__name__)

# <dataset>.<cell>.adapted_<method>_adapter | <dataset>.<cell>.<method>_model
_TRAINED = re.compile(r"(?P<dataset>[^.]+)\.(?P<cell>[^.]+)\."
                      r"(?:adapted_(?P<adapted>\w+)_adapter|(?P<feature>\w+)_model)")


class MlflowTracking:
    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        # kedro-mlflow's own before_pipeline_run (a plugin: called first) opened the run
        if mlflow.active_run() is None:
            return
        cell = {key: catalog.get(f"params:{key}").load() for key in ("shots", "few_shot_seed")
                if f"params:{key}" in catalog}
        mlflow.log_params({key: value for key, value in cell.items() if value is not None})

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if mlflow.active_run() is None:
            return
        leaf = dataset_name.rsplit(".", 1)[-1]
        if leaf.endswith("_metrics") and isinstance(data, dict):
            mlflow.log_metrics({f"{dataset_name}.{key}": float(value)
                                for key, value in data.items() if _number(value)})
        elif leaf.startswith("report__") and (location := self._path(dataset_name)):
            with storage.local_copy(location) as path:  # MLflow logs local files
                mlflow.log_artifact(str(path), "reports")
        elif (found := _TRAINED.fullmatch(dataset_name)) and not leaf.endswith("merged_model"):
            self._register(dataset_name, found, node)

    def _register(self, dataset_name: str, found: re.Match, node) -> None:
        location = self._path(dataset_name)
        if location is None:
            return
        method = found["adapted"] or found["feature"]
        inputs = {f"input.{name}.sha256": file_sha256(p) for name in node.inputs
                  if not name.startswith("params:") and (p := self._path(name))}
        with storage.local_copy(location) as path:
            version = Registry(registered_name(found["dataset"], method)).register(
                path, {"dataset": found["dataset"], "method": method, "cell": found["cell"],
                       "node": node.name, **inputs})
        logger.info("Registered %s as %s version %d", dataset_name, version.name,
                    version.version)

    def _path(self, name: str) -> str | None:
        """Where the dataset's file is (on any filesystem), if it is there."""
        if self._catalog is None:
            return None
        dataset = self._catalog.get(name, fallback_to_runtime_pattern=True)
        location = storage.described_location(getattr(dataset, "_describe", dict)())
        return location if location and storage.is_file(location) else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)
