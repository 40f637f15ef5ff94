"""The project's parameters as the pipeline registry needs them.

Kedro builds pipelines before a node sees a parameter, but ours depend on one: the
list of datasets (one namespace each). The project's config loader registers itself
when Kedro creates it (``kedro run``, ``kedro viz`` with or without hooks, a notebook's
session), so the registry reads the run's own environment; elsewhere (``kedro registry
list``) the configuration of ``KEDRO_ENV``, or of the default ``local`` environment, is read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kedro.config import AbstractConfigLoader, OmegaConfigLoader

from clip_lora_pipeline.core.errors import SettingsError

logger = logging.getLogger(__name__)

_active_loader: AbstractConfigLoader | None = None


def use_config_loader(loader: AbstractConfigLoader) -> None:
    global _active_loader  # noqa: PLW0603
    _active_loader = loader


class ProjectConfigLoader(OmegaConfigLoader):
    """``OmegaConfigLoader`` that the pipeline registry reads from once it exists.
    kedro-viz runs without project hooks, so a hook could not do this."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        use_config_loader(self)


def _loader() -> AbstractConfigLoader:
    if _active_loader is not None:  # not `or`: a config loader is a mapping, falsy until read
        return _active_loader
    return OmegaConfigLoader(
        conf_source=str(Path.cwd() / "conf"),
        base_env="base",
        default_run_env=os.environ.get("KEDRO_ENV", "local"),
    )


def parameters() -> dict[str, Any]:
    return _loader()["parameters"]


def _catalog_model() -> dict[str, Any] | None:
    """The model the catalog paths are named by (globals.yml), or None if unreadable."""
    try:
        return _loader()["globals"].get("model")
    except (KeyError, ValueError, OSError):
        return None


def dataset_names(params: dict[str, Any]) -> list[str]:
    """The datasets to run, each checked against ``dataset_configs``."""
    names = params.get("datasets") or []
    configs = params.get("dataset_configs") or {}
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise SettingsError(f"parameter 'datasets' must be a list of names, got {names!r}.")
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise SettingsError(
            f"datasets {unknown} have no entry under 'dataset_configs' in the parameters; "
            f"configured: {sorted(configs)}. Add e.g.\n  dataset_configs:\n    {unknown[0]}:\n"
            f"      source: image_folder\n      root: /path/to/{unknown[0]}"
        )
    from clip_lora_pipeline.core.dataset_settings import DatasetSettings

    for name in names:  # a typo fails here, named, before any node runs
        DatasetSettings.from_params(name, configs[name])
    return list(names)


def _mapping_keys(params: dict[str, Any], key: str, what: str) -> list[str]:
    value = params.get(key) or {}
    if not isinstance(value, dict):
        raise SettingsError(f"parameter '{key}' must map a name to {what}; got {value!r}.")
    return list(value)


def prompt_set_names(params: dict[str, Any]) -> list[str]:
    return _mapping_keys(params, "prompt_sets", "simple, ensemble, dataset or a list of templates")


def prompt_sets_for(params: dict[str, Any], dataset: str) -> list[str]:
    """The prompt sets evaluated on ``dataset``: the ``dataset`` set only where its
    source has templates of its own (elsewhere it would repeat ``simple`` under
    another name)."""
    from clip_lora_pipeline.core.prompts import has_dataset_templates

    source = (params.get("dataset_configs") or {}).get(dataset, {}).get("source")
    names = prompt_set_names(params)
    kept = [n for n in names
            if params["prompt_sets"][n] != "dataset" or has_dataset_templates(source)]
    if kept != names:
        logger.info("%s: prompt set(s) %s skipped: source %r has no dataset templates of its "
                    "own", dataset, sorted(set(names) - set(kept)), source)
    return kept


def check_run_settings(params: dict[str, Any]) -> None:
    """The model and runtime settings, built once here so that a typo fails before any
    node runs, naming the key."""
    from clip_lora_pipeline.core.model_id import ModelSpec
    from clip_lora_pipeline.core.runtime import RuntimeSettings
    from clip_lora_pipeline.core.settings import from_params

    if "model" in params:
        ModelSpec.from_params(params["model"])
        catalog_model = _catalog_model()
        if catalog_model is not None and dict(params["model"]) != dict(catalog_model):
            # --params changes the parameters, not globals.yml, and the catalog names
            # every feature and result by the globals' model: they would be mixed up.
            raise SettingsError(
                f"parameter 'model' is {dict(params['model'])}, but the output paths are "
                f"named by globals.yml's model {dict(catalog_model)}. Change the model in "
                "conf/<env>/globals.yml (or --env), not with --params.")
    from_params(RuntimeSettings, params.get("runtime"), "runtime")


def feature_methods(params: dict[str, Any]):
    """The ``feature_methods`` entries, each with its settings built and checked."""
    from clip_lora_pipeline.core.methods.registry import feature_method_entries

    return feature_method_entries(params.get("feature_methods"), prompt_set_names(params))


def adaptation_method_names(params: dict[str, Any]) -> list[str]:
    names = _mapping_keys(params, "adaptation_methods", "training settings")
    # The reports name every method in one namespace.
    features = [entry.name for entry in feature_methods(params)]
    taken = [n for n in names if n in features or n.startswith("zero_shot")]
    if taken:
        raise SettingsError(f"adaptation_methods {taken}: feature_methods {features} and names "
                            "starting with 'zero_shot' are the reports' names for other methods; "
                            "rename them.")
    from clip_lora_pipeline.core.adaptation_settings import adaptation_settings

    for name in names:  # a typo anywhere in an entry fails here, named
        adaptation_settings(name, params["adaptation_methods"][name] or {})
    return names
