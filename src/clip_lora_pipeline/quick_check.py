"""Lets ``kedro run`` stop before it builds the pipelines when nothing can have changed.

Building the pipelines imports torch, torchvision and open_clip (about 10 s), before the
runner can even find that every node is up to date. So when a run completes with every
node's fingerprint matching its record, ``save`` writes ``_quick_check.json`` beside the
records: a digest of what the command depends on, and the size and mtime of every file
its nodes read or wrote and of the node records. The same command later does nothing if
``unchanged`` finds all of it as it was:

- the command's options (pipeline, tags, ``--params``, environment, runner, ...);
- the resolved parameters and catalog, and every file of the configuration source;
- every file of the package's source (any code edit goes to the per-node check);
- the content of the image folders the parameters name (``FileHashes``: stat, then sha);
- the files and records above.

It is coarser than the per-node check (any edit means the full check), never finer.
Installed library versions are not part of it, as they are not part of the node
fingerprints either. Starting a run deletes the file, so a failed or killed run leaves
none.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

from kedro.framework.session import KedroSession
from upath import UPath

from clip_lora_pipeline.code_digest import digest
from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.atomic import atomic_path
from clip_lora_pipeline.fingerprints import (
    RECORD_DIR,
    RECORDS_PARAMETER,
    FileHashes,
    file_stat,
    folders_named,
)
from clip_lora_pipeline.summary import print_summary, summary_lines

logger = logging.getLogger(__name__)

FILE = "_quick_check.json"
PACKAGE_DIR = Path(__file__).resolve().parent


def _tree(root: Path, files: FileHashes, pattern: str = "*") -> list:
    if root.is_file():
        return [root.name, files.sha(root)]
    return [(p.relative_to(root).as_posix(), files.sha(p))
            for p in sorted(root.rglob(pattern)) if p.is_file()]


def stats(paths: list[str]) -> dict[str, list[int] | None]:
    return {path: file_stat(path) if storage.exists(path) else None for path in paths}


class QuickCheck:
    """The quick check for one ``kedro run`` command (its click options). ``records``:
    the folder of the node records; None: the run's parameter ``fingerprint_records``."""

    def __init__(self, options: dict[str, Any], records: str | Path | None = None):
        self.options = options
        self._records_option = records
        self._digest: str | None = None

    @functools.cached_property
    def _config(self) -> dict[str, Any]:
        """The command's environment, parameters, catalog and configuration folder."""
        with KedroSession.create(env=self.options.get("env"),
                                 conf_source=self.options.get("conf_source"),
                                 runtime_params=self.options.get("params")) as session:
            context = session.load_context()
            # Not context.params: Kedro validates those against every pipeline, which
            # imports them.
            return {"env": context.env, "parameters": context.config_loader["parameters"],
                    "catalog": context.config_loader["catalog"],
                    "conf": Path(context.config_loader.conf_source)}

    @functools.cached_property
    def folder(self) -> Path | UPath:
        records = (self._records_option
                   or self._config["parameters"].get(RECORDS_PARAMETER) or RECORD_DIR)
        return storage.data_path(records)

    @property
    def path(self) -> Path | UPath:
        return self.folder / FILE

    @functools.cached_property
    def files(self) -> FileHashes:
        return FileHashes(self.folder / "_files.json")

    def digest(self) -> str:
        if self._digest is None:
            config = self._config
            parameters = config["parameters"]
            self._digest = digest(
                dict(self.options), config["env"], parameters, config["catalog"],
                _tree(config["conf"], self.files), _tree(PACKAGE_DIR, self.files, "*.py"),
                [self.files.folder(f) for f in sorted(set(folders_named(parameters)))])
            self.files.save()
        return self._digest

    def _records(self) -> list[str]:
        return [str(self.folder / name) for name in storage.listdir(self.folder)
                if name.endswith(".json") and not name.startswith("_")]

    def unchanged(self) -> bool:
        """True when the last complete run was this command, with every node up to date,
        and nothing it depends on has changed since."""
        if not self.path.exists():
            return False
        saved = json.loads(self.path.read_text())
        return (saved["digest"] == self.digest()
                and saved["records"] == stats(self._records())
                and saved["files"] == stats(list(saved["files"])))

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)

    def save(self) -> None:
        """After a run: kept only if the runner found every node up to date at its end."""
        last = self.folder / "_last_run.json"
        run = json.loads(last.read_text()) if last.exists() else {}
        if not run.get("up_to_date"):
            return
        self._digest = None  # the run may have written a folder it reads (a download)
        with atomic_path(self.path) as staging:
            staging.write_text(json.dumps({
                "digest": self.digest(), "records": stats(self._records()),
                "files": stats(run["files"]), "nodes": run["ran"] + run["reused"]}))

    def report(self, seconds: float) -> None:
        """The log line, summary and ``_last_run.json`` of a run that did nothing."""
        saved = json.loads(self.path.read_text())
        nodes = saved["nodes"]
        with atomic_path(self.folder / "_last_run.json") as staging:
            staging.write_text(json.dumps({"ran": [], "seconds": {}, "reused": nodes,
                                           "quick": True}, indent=1))
        logger.info("Nothing to run: all %d nodes are up to date (the same command as the "
                    "last complete run, with the same code, configuration and files; "
                    "checked before loading the pipelines. CLIP_LORA_RECOMPUTE=1 "
                    "recomputes all).", len(nodes))
        # the files of the last complete run, which this one would have made again
        print_summary(summary_lines(0, len(nodes), seconds, saved["files"],
                                    sys.stdout.isatty()))
