"""Node fingerprints: what a node's result depends on, hashed, and the record of the
fingerprint each node's outputs were last written with (``FingerprintRunner``).

A node's fingerprint hashes
- each input's content: a parameter's value; a dataset's file content, taken from the
  record its producer wrote (the file's sha256, checked against its size and mtime) or
  hashed afresh; a folder that a parameter names (``root``, ``input``): its files'
  relative paths and contents (hashed again only where size or mtime changed). A
  dataset's own folder counts only for the nodes that read it directly (tagged
  ``reads_dataset_folder``: download, validate): the others read its images by the paths
  of tables that carry each image's content hash (validate's ``content_hash``), so they
  depend on those images' content, and on no other file, through their input tables;
- the arguments bound to the node function (``functools.partial``: name, shots, seed);
- its code: the function's source, the same-module functions it calls, and the source
  of every project module its module imports, transitively.

Not detected: changes in installed libraries (open_clip, torch, ...), in files read
outside the catalog and the named folders, and in code reached only through objects
built at run time from another package.

Records live in ``<fingerprint_records>/<node>.json`` (the parameter; by default
``<data_root>/.fingerprints``, on any filesystem: ``core.storage``). A node's record is
deleted before it runs and written (atomically) after all its outputs are saved, so a
killed run never marks a node done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from upath import UPath

from clip_lora_pipeline.code_digest import digest, node_code
from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.atomic import atomic_path

logger = logging.getLogger(__name__)

FOLDER_KEYS = ("root", "input")  # parameter keys whose value names a folder read by path
RECORD_DIR = Path("data/.fingerprints")  # where no parameter names the folder
RECORDS_PARAMETER = "fingerprint_records"
VOLATILE = "volatile"  # the tag of nodes that read state outside the catalog: always run
DATASET_SETTINGS = "params:dataset_configs."  # a dataset's entry, whose root is its folder
READS_DATASET_FOLDER = "reads_dataset_folder"  # the tag of nodes that list or read it
_CHUNK = 1 << 20


def file_sha(path: Path | UPath) -> str:
    sha = hashlib.sha256()
    with storage.open_for_read(path) as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def file_stat(path: Path | UPath) -> list:
    return storage.signature(path)


def records_folder(catalog) -> Path | UPath:
    """The folder of the node records: the run's parameter ``fingerprint_records``
    (under the data root, ``conf/base/parameters.yml``), else ``RECORD_DIR``."""
    name = f"params:{RECORDS_PARAMETER}"
    folder = catalog.get(name).load() if name in catalog else None
    return storage.data_path(folder or RECORD_DIR)


# Folders and files --------------------------------------------------------------------
class FileHashes:
    """sha256 of files, remembered with their size and mtime so that unchanged files are
    not read again (``<records>/_files.json``)."""

    def __init__(self, path: Path | UPath):
        self.path = storage.data_path(path)
        self.known: dict[str, list] = (json.loads(self.path.read_text())
                                       if self.path.exists() else {})
        self.changed = False

    def sha(self, path: Path | UPath) -> str:
        key, stat = storage.identity(path), file_stat(path)
        entry = self.known.get(key)
        if entry is None or entry[:2] != stat:
            self.known[key] = [*stat, file_sha(path)]
            self.changed = True
        return self.known[key][2]

    def folder(self, root: Path | UPath | str) -> str:
        root = storage.data_path(root)
        return digest([(p.relative_to(root).as_posix(), self.sha(p))
                       for p in storage.files_under(root)])

    def save(self) -> None:
        if self.changed:
            with atomic_path(self.path) as staging:
                staging.write_text(json.dumps(self.known))
            self.changed = False


def folders_named(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in FOLDER_KEYS and isinstance(item, str) and item and storage.is_dir(item):
                yield item
            else:
                yield from folders_named(item)
    elif isinstance(value, list):
        for item in value:
            yield from folders_named(item)


# The record ---------------------------------------------------------------------------
class Ledger:
    """The fingerprints of one run's nodes against the records of earlier runs."""

    def __init__(self, catalog, folder: Path | UPath | str = RECORD_DIR):
        self.catalog, self.folder = catalog, storage.data_path(folder)
        self.files = FileHashes(self.folder / "_files.json")
        self.records = {}
        for name in storage.listdir(self.folder):
            if name.endswith(".json") and not name.startswith("_"):
                record = json.loads((self.folder / name).read_text())
                self.records[record["node"]] = record
        self._folders: dict[str, str] = {}
        self._written = {name: entry for record in self.records.values()
                         for name, entry in record["outputs"].items()}

    def _record_path(self, node_name: str) -> Path | UPath:
        return self.folder / f"{node_name.replace(os.sep, '_')}.json"

    def _filepath(self, name: str) -> Path | UPath | None:
        dataset = self.catalog.get(name, fallback_to_runtime_pattern=True)
        location = storage.described_location(getattr(dataset, "_describe", dict)())
        return storage.data_path(location) if location else None

    def _folder(self, root: str) -> str:
        if root not in self._folders:
            self._folders[root] = self.files.folder(root)
        return self._folders[root]

    def input_fingerprint(self, name: str, folders: bool = True) -> str:
        """``folders``: whether the folders a parameter names are part of it."""
        if name.startswith("params:") or name == "parameters":
            value = self.catalog.get(name).load()  # not catalog.load: it logs each load
            named = folders_named(value) if folders else ()
            return digest(value, [self._folder(f) for f in named])
        path = self._filepath(name)
        if path is None:
            return "in memory"
        if not path.exists():
            return "missing"
        entry = self._written.get(name)  # by its producer: no need to read it again
        if entry and entry["stat"] == file_stat(path):
            return entry["sha"]
        return self.files.sha(path)

    def fingerprint(self, node) -> dict[str, Any]:
        code, bound = node_code(node.func)
        reads_folder = READS_DATASET_FOLDER in node.tags
        return {"inputs": {name: self.input_fingerprint(
                    name, folders=reads_folder or not name.startswith(DATASET_SETTINGS))
                           for name in node.inputs},
                "code": code, "bound": digest(bound)}

    def reasons(self, node, parts: dict[str, Any]) -> list[str]:
        """Why ``node`` must run; empty when its outputs are those of ``parts``."""
        if VOLATILE in node.tags:
            return ["it reads state outside the catalog (the model registry)"]
        record = self.records.get(node.name)
        if record is None:
            return ["no record of an earlier run"]
        why = []
        for name in node.outputs:
            path = self._filepath(name)
            if path is None:
                return [f"output {name} is not kept in a file"]
            if not path.exists():
                why.append(f"output {name} is missing")
            elif name not in record["outputs"] or (
                    record["outputs"][name]["stat"] != file_stat(path)
                    and record["outputs"][name]["sha"] != self.files.sha(path)):
                why.append(f"output {name} was changed outside the run")
        old = record["parts"]
        for name, value in parts["inputs"].items():
            if old["inputs"].get(name) != value:
                kind = "parameter" if name.startswith("params:") else "input"
                why.append(f"{kind} {name} changed")
        if old["code"] != parts["code"]:
            why.append("its code changed")
        if old["bound"] != parts["bound"]:
            why.append("its bound arguments changed")
        return why

    def forget(self, node) -> None:
        """Before the node runs: until it finishes, it has no valid record."""
        self.records.pop(node.name, None)
        self._record_path(node.name).unlink(missing_ok=True)

    def record(self, node) -> None:
        """After all the node's outputs are saved: its fingerprint, taken again (a node
        may write the folder it reads, as a download does), and its outputs' hashes."""
        self._folders.clear()
        outputs = {}
        for name in node.outputs:
            path = self._filepath(name)
            if path is not None and path.exists():
                outputs[name] = {"sha": file_sha(path), "stat": file_stat(path)}
        record = {"node": node.name, "parts": self.fingerprint(node), "outputs": outputs}
        with atomic_path(self._record_path(node.name)) as staging:
            staging.write_text(json.dumps(record, indent=1))
        self.records[node.name] = record
        self._written.update(outputs)
        self.files.save()

    def up_to_date(self, nodes) -> bool:
        """Whether every node's fingerprint, taken again now, is the one recorded."""
        self._folders.clear()
        return all(not self.reasons(node, self.fingerprint(node)) for node in nodes)

    def paths(self, nodes) -> list[str]:
        """The files the nodes read or write (those kept in files)."""
        names = sorted({name for node in nodes for name in (*node.inputs, *node.outputs)
                        if not name.startswith("params:") and name != "parameters"})
        return [str(path) for path in map(self._filepath, names) if path is not None]

    def write_run(self, seconds: dict[str, float], reused: list[str], nodes) -> None:
        """What the last run did, for scripts, tests and ``quick_check``:
        ``_last_run.json`` (the nodes run, in order, with the seconds each took, those
        reused, whether all are now up to date, and the files they read or write)."""
        with atomic_path(self.folder / "_last_run.json") as staging:
            staging.write_text(json.dumps(
                {"ran": list(seconds), "seconds": seconds, "reused": reused,
                 "up_to_date": self.up_to_date(nodes), "files": self.paths(nodes)},
                indent=1))
