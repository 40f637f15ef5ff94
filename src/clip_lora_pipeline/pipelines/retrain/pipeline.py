"""``retrain``: the data refreshed (only new or changed files validated and encoded), the
configured adaptation method trained on the cell's sample as the challenger, the
champion scored on the same test split, the gate, and the model history."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.core.errors import SettingsError
from clip_lora_pipeline.fingerprints import VOLATILE
from clip_lora_pipeline.pipelines import namespaces
from clip_lora_pipeline.pipelines.retrain.nodes import (
    evaluate_champion,
    model_history,
    promote,
    register_challenger,
)

PARAMETERS = {"params:retrain", "params:model", "params:runtime", "params:embedding_store"}


def create_pipeline(method: str) -> Pipeline:
    adapted, own = f"adapted_{method}", f"retrain_{method}"
    return Pipeline([
        Node(register_challenger,
             [f"{adapted}_adapter", "train", "val", f"{adapted}_summary", "params:retrain"],
             f"{own}_challenger", name=f"register_{method}", tags=["retrain"]),
        Node(evaluate_champion,
             ["test", "params:retrain", "params:dataset", "params:model", "params:runtime",
              "params:embedding_store"],
             [f"{own}_champion_metrics", f"{own}_champion_predictions"],
             name=f"evaluate_champion_{method}", tags=["retrain", "gpu", VOLATILE]),
        Node(promote,
             [f"{own}_challenger", f"{adapted}_metrics", f"{adapted}_predictions",
              f"{own}_champion_metrics", f"{own}_champion_predictions", "params:retrain"],
             f"{own}_promotion", name=f"promote_{method}", tags=["retrain", VOLATILE]),
        Node(model_history, [f"{own}_promotion", "params:retrain"],
             [f"{own}_history", f"{own}_history_json", f"{own}_history_markdown"],
             name=f"model_history_{method}", tags=["retrain", "reporting", VOLATILE]),
    ])


def check_settings(message: str) -> None:
    raise SettingsError(message)


def failing(message: str) -> Pipeline:
    """One node that fails with ``message`` when run: wrong ``retrain`` settings never
    stop the other pipelines from building."""
    return Pipeline([Node(namespaces.bound(check_settings, message=message), None,
                          "retrain_settings_checked", name="check_retrain_settings")],
                    tags="retrain")


def for_cell(name: str, cell: Cell, method: str) -> Pipeline:
    return namespaces.for_cell(create_pipeline(method), name, cell, PARAMETERS)
