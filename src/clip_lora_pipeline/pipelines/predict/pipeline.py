"""Find the new images, then predict with the model named in ``predict.model``.

The model node reads the chosen dataset's stored artifact; the pipeline does not make it:
run the zero_shot, linear_probe or lora pipeline first."""

from __future__ import annotations

from functools import partial, update_wrapper
from typing import Any

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.core.errors import SettingsError
from clip_lora_pipeline.core.predict import ZERO_SHOT, PredictSettings, is_registered
from clip_lora_pipeline.fingerprints import VOLATILE
from clip_lora_pipeline.pipelines.predict.nodes import (
    find_new_images,
    predict_adapted,
    predict_feature_method,
    predict_registered,
    predict_zero_shot,
)

PARAMETERS = {"params:predict", "params:model", "params:runtime"}


def model_artifact(settings: PredictSettings, cell: Cell, features: list[str]) -> str:
    """The catalog entry the chosen model is read from: the text classifier is made per
    dataset, trained models per few-shot cell (``shots`` and ``few_shot_seed``)."""
    if settings.model == ZERO_SHOT:
        return f"{settings.dataset}.text_classifier_{settings.prompt_set}"
    if settings.model in features:
        return f"{settings.dataset}.{cell.name}.{settings.model}_model"
    return f"{settings.dataset}.{cell.name}.adapted_{settings.model}_adapter"


def create_pipeline(settings: PredictSettings, cell: Cell, features: list[str]) -> Pipeline:
    """``features``: the names of the methods on cached features."""
    if is_registered(settings.model):  # read from the model registry by the node itself
        return _pipeline(predict_registered, ["params:retrain"], set(), settings, [VOLATILE])
    artifact = model_artifact(settings, cell, features)
    if settings.model == ZERO_SHOT:
        predict = predict_zero_shot
    elif settings.model in features:
        predict = predict_feature_method
    else:
        predict = predict_adapted
    return _pipeline(predict, [artifact], {artifact}, settings)


def _pipeline(predict, model_inputs: list[str], inputs: set[str],
              settings: PredictSettings, tags: list[str] = ()) -> Pipeline:
    """Find the images, then ``predict`` with ``model_inputs``: the model's catalog
    entry, or the parameters that name it in the registry."""
    registry = [i for i in model_inputs if i.startswith("params:")]
    artifact = [i for i in model_inputs if not i.startswith("params:")]
    return Pipeline(
        [
            Node(
                find_new_images, "params:predict",
                ["images", "rejected_images", "rejected_images_csv"],
                name="find_new_images",
            ),
            Node(
                predict,
                ["images", *artifact, "params:model", "params:runtime", "params:predict",
                 *registry],
                ["predictions", "predictions_csv"],
                name=f"predict_{settings.model}",
                tags=["gpu", *tags],
            ),
        ],
        tags="predict",
        namespace="predict",
        inputs=inputs,
        parameters=PARAMETERS | set(registry),
    )


def check_parameters(message: str) -> None:
    raise SettingsError(message)


def for_parameters(params: dict[str, Any], datasets: list[str],
                   prompt_sets: dict[str, list[str]], features: list[str], methods: list[str],
                   cell: Cell) -> Pipeline:
    """The predict pipeline as the parameters ask for it.

    With wrong ``predict`` parameters it is one node that fails with the reason when
    run, so that the mistake never stops the other pipelines from building.
    """
    chosen = params.get("predict")
    dataset = chosen.get("dataset") if isinstance(chosen, dict) else None
    try:
        settings = PredictSettings.from_params(chosen, datasets, prompt_sets.get(dataset, []),
                                               features, methods)
    except ValueError as error:
        return Pipeline(
            [Node(update_wrapper(partial(check_parameters, str(error)), check_parameters),
                  None, "predictions", name="check_parameters")],
            tags="predict", namespace="predict",
        )
    return create_pipeline(settings, cell, features)
