"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from clip_lora_pipeline import project_config
from clip_lora_pipeline.core.cells import Cell, SweepSettings
from clip_lora_pipeline.core.generate import GenerateSettings
from clip_lora_pipeline.core.promotion import RetrainSettings
from clip_lora_pipeline.pipelines.augment import pipeline as augment
from clip_lora_pipeline.pipelines.data import pipeline as data
from clip_lora_pipeline.pipelines.feature_methods import pipeline as feature_methods
from clip_lora_pipeline.pipelines.lora import pipeline as lora
from clip_lora_pipeline.pipelines.predict import pipeline as predict
from clip_lora_pipeline.pipelines.reporting import pipeline as reporting
from clip_lora_pipeline.pipelines.reporting.pipeline import method_results
from clip_lora_pipeline.pipelines.retrain import pipeline as retrain
from clip_lora_pipeline.pipelines.sweep import pipeline as sweep
from clip_lora_pipeline.pipelines.zero_shot import pipeline as zero_shot


def _total(pipelines) -> Pipeline:
    return sum(pipelines, Pipeline([]))


class _Project:
    """The configured datasets, prompt sets and methods, and the pipelines per cell."""

    def __init__(self, params):
        project_config.check_run_settings(params)
        self.names = project_config.dataset_names(params)
        self.prompt_sets = {n: project_config.prompt_sets_for(params, n) for n in self.names}
        self.methods = project_config.adaptation_method_names(params)
        self.features = project_config.feature_methods(params)
        self.feature_names = [entry.name for entry in self.features]

    def data(self, cells: list[Cell]) -> Pipeline:
        return _total(data.for_dataset(n) + _total(data.for_cell(n, c) for c in cells)
                      for n in self.names)

    def zero_shot(self) -> Pipeline:
        return _total(zero_shot.for_dataset(n, self.prompt_sets[n]) for n in self.names)

    def feature_pipeline(self, cells: list[Cell]) -> Pipeline:
        """The methods on cached features, with the embeddings and text classifiers
        they read."""
        prompt_sets = sorted({e.prompt_set for e in self.features if e.prompt_set})
        return _total(
            zero_shot.encode_test_for_dataset(n)
            + _total(zero_shot.text_classifier_for_dataset(n, s) for s in prompt_sets)
            + _total(zero_shot.embeddings_for_cell(n, c)
                     + feature_methods.for_cell(n, c, self.features) for c in cells)
            for n in self.names)

    def adaptation(self, cells: list[Cell]) -> Pipeline:
        return _total(lora.for_cell(n, c, self.methods) for n in self.names for c in cells)

    def augment(self, params, cell: Cell) -> Pipeline:
        """Generated images for each dataset's sample of ``cell``; the ``augment``
        parameters are checked here, before any node runs."""
        GenerateSettings.from_params(params.get("augment"))
        return _total(augment.for_cell(n, cell) for n in self.names)

    def reporting(self, cell: Cell) -> Pipeline:
        return _total(
            reporting.for_cell(n, cell, self.prompt_sets[n], self.feature_names, self.methods)
            for n in self.names) + reporting.create_summary_pipeline(
                self.prompt_sets, cell, self.report_methods)

    @property
    def report_methods(self) -> list[str]:
        """Every method of the comparison, in its order (prompt sets of all datasets)."""
        prompt_sets = dict.fromkeys(s for n in self.names for s in self.prompt_sets[n])
        return list(method_results(list(prompt_sets), self.feature_names, self.methods))

    def retrain(self, params, cell: Cell) -> Pipeline:
        """The data, the configured method's training and evaluation (no export) and
        the gate, for ``retrain.dataset``; wrong settings give one failing node."""
        try:
            settings = RetrainSettings.from_params(params.get("retrain") or {}, self.names,
                                                   self.methods)
        except (TypeError, ValueError) as error:
            return retrain.failing(str(error))
        name, method = settings.dataset, settings.method
        trained = lora.for_cell(name, cell, [method])
        return (data.for_dataset(name) + data.for_cell(name, cell)
                + (trained - trained.only_nodes_with_tags("export"))
                + retrain.for_cell(name, cell, method))

    def sweep_aggregate(self, grid: SweepSettings) -> Pipeline:
        per_cell = {n: method_results([], self.feature_names, self.methods) for n in self.names}
        zero = {n: [f"zero_shot_{s}" for s in self.prompt_sets[n]] for n in self.names}
        return sweep.create_aggregate_pipeline(grid, per_cell, zero)


def register_pipelines() -> dict[str, Pipeline]:
    """One namespace per configured dataset (``flowers102.split``), and inside it one
    per few-shot cell (``flowers102.shots_16_seed_1.train_lora``).

    A single run is the cell of ``shots`` and ``few_shot_seed``; ``sweep`` runs every
    cell of ``sweep.shots`` x ``sweep.seeds``. Each pipeline includes the steps it
    depends on, so ``kedro run --pipeline zero_shot`` works from a fresh checkout.
    """
    params = project_config.parameters()
    project = _Project(params)
    cell = Cell.from_params(params)
    grid = SweepSettings.from_params(params.get("sweep"))
    data_pipeline = project.data([cell])
    zero_shot_pipeline = data_pipeline + project.zero_shot()
    feature_pipeline = data_pipeline + project.feature_pipeline([cell])
    lora_pipeline = data_pipeline + project.adaptation([cell])
    reporting_pipeline = project.reporting(cell)
    adapted = project.adaptation(grid.cells)
    # A sweep compares numbers; merged exports of every cell would only fill the disk.
    sweep_pipeline = (project.data(grid.cells) + project.zero_shot()
                      + project.feature_pipeline(grid.cells)
                      + (adapted - adapted.only_nodes_with_tags("export"))
                      + project.sweep_aggregate(grid))
    return {
        "__default__": zero_shot_pipeline + feature_pipeline + lora_pipeline + reporting_pipeline,
        "reporting": reporting_pipeline,
        "lora": lora_pipeline,
        # Not in __default__: it needs the user's images and a trained model.
        "predict": predict.for_parameters(params, project.names, project.prompt_sets,
                                          project.feature_names, project.methods, cell),
        "data": data_pipeline,
        "zero_shot": zero_shot_pipeline,
        "feature_methods": feature_pipeline,
        "sweep": sweep_pipeline,
        # Not in __default__: it writes to the model registry.
        "retrain": project.retrain(params, cell),
        # Not in __default__: it needs diffusers ([augment]) and Stable Diffusion weights.
        "augment": data_pipeline + project.augment(params, cell),
    }
