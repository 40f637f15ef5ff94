"""Project hooks: stop a run early when an input it needs was never made, save the
rejected-images table of a validation that stops the run, and say where rejected-image
tables and the report were written."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.errors import UserError

logger = logging.getLogger(__name__)


class ProjectHooks:
    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        # Kedro would fail on the first load with a bare "file not found"; say instead
        # which inputs are missing and what makes them, before any node runs.
        missing = [
            name for name in sorted(pipeline.inputs())
            if not name.startswith("params:") and name != "parameters"
            and name in catalog and not _stored(catalog, name)
        ]
        if missing:
            raise MissingInputsError(missing_inputs_message(missing, catalog))

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if dataset_name.rsplit(".", 1)[-1].startswith("report__"):  # <cell>.report__<datasets>
            logger.info("Report written: %s", self._where(dataset_name))
            return
        if not dataset_name.endswith("rejected_images") or data is None or not len(data):
            return
        logger.warning("%d rejected image(s) are listed in %s", len(data),
                       self._where(dataset_name))

    @hook_impl
    def on_node_error(self, error: Exception, node, catalog) -> None:
        # Nodes write no files, so a validation that stops the run (BadImagesError)
        # carries its rejected-images table; saving it here lets the user read why each
        # file was refused. Kedro then raises the node's error as usual.
        rejected = getattr(error, "rejected", None)
        if rejected is None:
            return
        for name in node.outputs:
            if name.rsplit(".", 1)[-1] == "rejected_images" and name in catalog:
                self._save_rejected(catalog, name, rejected)

    def _save_rejected(self, catalog, name: str, rejected: Any) -> None:
        try:
            catalog.save(name, rejected)
        except Exception as exc:  # a failed save must not hide the node's own error
            logger.error("Could not save the rejected-images table to %s: %s",
                         _where(catalog, name), exc)
            return
        logger.error("The run stops in validation; %d rejected image(s) are listed in %s",
                     len(rejected), _where(catalog, name))

    def _where(self, dataset_name: str) -> str:
        return _where(self._catalog, dataset_name)


def _where(catalog, dataset_name: str) -> str:
    if catalog is not None and dataset_name in catalog:
        return f"{dataset_name} ({_filepath(catalog, dataset_name) or 'in memory'})"
    return dataset_name


def _stored(catalog, name: str) -> bool:
    # A summary marked remake counts as missing for --only-missing-outputs, so that it
    # is remade; as an input it only has to be there.
    dataset = catalog.get(name)
    return dataset.stored() if hasattr(dataset, "stored") else catalog.exists(name)


class MissingInputsError(UserError, RuntimeError):
    """A run's inputs were never made by the steps upstream of it."""


def _filepath(catalog, name: str) -> str:
    return storage.described_location(catalog[name]._describe()) or ""


def missing_inputs_message(missing: list[str], catalog) -> str:
    from kedro.framework.project import pipelines

    lines = ["This run needs outputs of earlier steps that do not exist yet:"]
    for name in missing:
        producers = [n.name for n in pipelines["__default__"].nodes if name in n.outputs]
        named = sorted(
            (len(p.nodes), key) for key, p in pipelines.items()
            if key != "__default__" and name in p.all_outputs()
        )
        made_by = f"made by node {producers[0]}" if producers else "no node makes it"
        run = f"; run `kedro run --pipelines {named[0][1]}` first" if named else ""
        lines.append(f"  - {name} ({_filepath(catalog, name)}): {made_by}{run}")
    lines.append("Or run the whole project: `kedro run` (finished, unchanged steps are "
                 "skipped).")
    return "\n".join(lines)
