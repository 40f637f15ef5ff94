"""``kedro run``'s default runner here (``cli.py``): Kedro's sequential runner, but a node
whose fingerprint (``fingerprints``: its inputs' content, parameters and code) equals the
one recorded with its existing outputs is skipped, and the log says why each other node
runs. ``CLIP_LORA_RECOMPUTE=1`` (or ``--runner-params recompute=true``) runs every node
of the run (``cli.py`` asks for it when nodes are named with ``--nodes``/``--from-nodes``)."""

from __future__ import annotations

import os
import time
from collections import Counter
from itertools import chain
from pathlib import Path

from kedro.runner import SequentialRunner
from kedro.runner.task import Task

from clip_lora_pipeline.fingerprints import Ledger, records_folder

RECOMPUTE_ENV = "CLIP_LORA_RECOMPUTE"


def truthy(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class FingerprintRunner(SequentialRunner):
    def __init__(self, is_async: bool = False, recompute: bool | str = False,
                 records: str | Path | None = None):
        super().__init__(is_async=is_async)
        self.recompute = truthy(recompute) or truthy(os.environ.get(RECOMPUTE_ENV, ""))
        self.records = records  # None: the run's parameter fingerprint_records

    def _run(self, pipeline, catalog, hook_manager=None, run_id=None) -> None:
        nodes = pipeline.nodes
        self._validate_catalog(catalog)
        self._validate_nodes(nodes)
        self._set_manager_datasets(catalog)
        load_counts = Counter(chain.from_iterable(n.inputs for n in nodes))
        ledger = Ledger(catalog, self.records or records_folder(catalog))
        reused, done, seconds = [], [], {}
        for position, node in enumerate(nodes, 1):
            why = (["a full recompute was asked for"] if self.recompute
                   else ledger.reasons(node, ledger.fingerprint(node)))
            if not why:
                reused.append(node.name)
                continue
            self._logger.info("Running %s: %s (node %d of %d)", node.name, "; ".join(why),
                              position, len(nodes))
            ledger.forget(node)
            start = time.perf_counter()
            try:
                Task(node=node, catalog=catalog, hook_manager=hook_manager,
                     is_async=self._is_async, run_id=run_id).execute()
            except Exception:
                # Not Kedro's advice (--from-nodes), which would recompute those nodes.
                if done:
                    self._logger.warning("%d of %d nodes finished and are kept; the same "
                                         "command resumes after them.", len(done), len(nodes))
                raise
            ledger.record(node)
            seconds[node.name] = round(time.perf_counter() - start, 3)
            done.append(node)
            self._logger.info("Completed node: %s", node.name)
            self._release_datasets(node, catalog, load_counts, pipeline)
        ledger.write_run(seconds, reused, nodes)
        self._log_summary(reused, len(nodes))

    def _log_summary(self, reused: list[str], total: int) -> None:
        if len(reused) == total:
            self._logger.info("Nothing to run: all %d nodes are up to date (their inputs, "
                              "parameters and code are unchanged; %s=1 recomputes all).",
                              total, RECOMPUTE_ENV)
        elif reused:
            self._logger.info("Reused %d of %d nodes (unchanged): %s", len(reused), total,
                              ", ".join(reused))
