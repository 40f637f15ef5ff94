"""Project hooks: make the active configuration visible to the pipeline registry, and
say where rejected-image tables were written."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

from clip_lora_pipeline import project_config

logger = logging.getLogger(__name__)


class ProjectHooks:
    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_context_created(self, context) -> None:
        # The registry builds one namespace per configured dataset, so it must read the
        # parameters of the environment this run uses (e.g. --env smoke).
        project_config.use_config_loader(context.config_loader)

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if not dataset_name.endswith("rejected_images") or data is None or not len(data):
            return
        where = dataset_name
        if self._catalog is not None and dataset_name in self._catalog:
            described = self._catalog[dataset_name]._describe()
            where = f"{dataset_name} ({described.get('filepath', 'in memory')})"
        logger.warning("%d rejected image(s) are listed in %s", len(data), where)
