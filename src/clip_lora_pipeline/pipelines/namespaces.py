"""How the pipelines name things: one namespace per dataset (``flowers102.split``) and,
inside it, one per few-shot cell (``flowers102.shots_16_seed_1.train_lora``); a cell's
report is a namespace of its own (``shots_16_seed_1.flowers102.report_confusion_lora``).

A cell's nodes read the dataset's own outputs (manifest, splits, test embeddings, text
classifiers) under the dataset's names, so those are made once however many cells
there are; everything that depends on the few-shot sample carries the cell's name.
The reports sit outside the cells' namespaces: kedro-viz draws a namespace as one node,
and a cell that both read results and made embeddings would put the layers in a cycle.
"""

from __future__ import annotations

import hashlib
from functools import partial, update_wrapper

from kedro.pipeline import Pipeline

from clip_lora_pipeline.core.cells import Cell

# Outputs made once per dataset that cell nodes read.
DATASET_LEVEL = {"manifest", "classes", "images", "rejected_images", "train_pool", "val_pool",
                 "test", "test_embeddings"}


def covered(datasets: list[str]) -> str:
    """The name of the set of datasets a cell's summary covers, in its outputs' names and
    paths (``report__flowers102+eurosat``), so a run with another dataset list writes
    another report instead of overwriting this one. Long lists get a short hash."""
    name = "+".join(datasets)
    if len(name) <= 80:
        return name
    return f"{len(datasets)}_datasets_{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def bound(func, **fixed):
    """``partial`` that keeps the function's name, for logs and kedro-viz."""
    return update_wrapper(partial(func, **fixed), func)


def _parameters(pipeline: Pipeline, name: str, parameters) -> dict[str, str]:
    """Shared parameters keep their names; ``params:dataset`` is this dataset's entry
    of ``dataset_configs``. Only those the pipeline reads (Kedro refuses others)."""
    mapping = {p: p for p in parameters} if not isinstance(parameters, dict) else dict(parameters)
    mapping["params:dataset"] = f"params:dataset_configs.{name}"
    used = pipeline.inputs()
    return {k: v for k, v in mapping.items() if k in used}


def for_dataset(pipeline: Pipeline, name: str, parameters: set[str] | dict[str, str] = ()
                ) -> Pipeline:
    """``pipeline`` in the namespace ``name``, reading ``params:dataset_configs.<name>``."""
    return Pipeline(pipeline, namespace=name,
                    parameters=_parameters(pipeline, name, parameters))


def for_cell(pipeline: Pipeline, name: str, cell: Cell,
             parameters: set[str] | dict[str, str] = ()) -> Pipeline:
    """``pipeline`` in the namespace ``<name>.<cell>``; its inputs that are made per
    dataset (``DATASET_LEVEL`` and text classifiers) keep the dataset's names."""
    shared = {i for i in pipeline.inputs()
              if i in DATASET_LEVEL or i.startswith("text_classifier_")}
    return Pipeline(pipeline, namespace=f"{name}.{cell.name}",
                    inputs={i: f"{name}.{i}" for i in shared},
                    parameters=_parameters(pipeline, name, parameters))


def for_cell_report(pipeline: Pipeline, name: str, cell: Cell) -> Pipeline:
    """``pipeline`` (reporting on dataset ``name``) in the namespace ``<cell>.<name>``; it
    reads the cell's results, and zero-shot's under the dataset's names."""
    inputs = {i: f"{name}.{i}" if i.startswith("zero_shot_") else f"{name}.{cell.name}.{i}"
              for i in pipeline.inputs() if not i.startswith("params:")}
    return Pipeline(pipeline, namespace=f"{cell.name}.{name}", inputs=inputs,
                    parameters=_parameters(pipeline, name, ()))
