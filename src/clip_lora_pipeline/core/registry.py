"""Trained models in MLflow's model registry: each is a version of ``<dataset>-<method>``,
its artefact file logged with the run that registered it, and its identity in tags.

The aliases ``champion`` (the model in use) and ``challenger`` (the latest candidate)
point at versions; no version is ever deleted, so rolling back is pointing the alias
back (``rollback``). Works on any tracking URI; the project's is
``sqlite:///mlflow.db`` (conf/base/mlflow.yml).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.errors import UserError

CHAMPION, CHALLENGER = "champion", "challenger"
ARTEFACT_DIR = "model"
SHA_TAG = "artefact_sha256"


class RegistryError(UserError, LookupError):
    """A registered model, version or alias that does not exist."""


def registered_name(dataset: str, method: str) -> str:
    return f"{dataset}-{method}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with storage.open_for_read(path) as handle:  # a catalog file on any filesystem
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    run_id: str
    tags: dict[str, str]
    aliases: tuple[str, ...]

    @classmethod
    def of(cls, model_version) -> Version:
        return cls(model_version.name, int(model_version.version), model_version.run_id or "",
                   dict(model_version.tags or {}), tuple(model_version.aliases or ()))


class Registry:
    """One registered model's versions and aliases."""

    def __init__(self, name: str, tracking_uri: str | None = None):
        self.name = name
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def versions(self) -> list[Version]:
        """Every version, oldest first, with its aliases; none when the model was never
        registered."""
        found = self.client.search_model_versions(f"name='{self.name}'")
        aliases = self._aliases()  # a search leaves them out
        return sorted((replace(Version.of(v), aliases=tuple(aliases.get(int(v.version), ())))
                       for v in found), key=lambda v: v.version)

    def _aliases(self) -> dict[int, list[str]]:
        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException:
            return {}
        by_version: dict[int, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(int(version), []).append(alias)
        return by_version

    def find(self, sha: str) -> Version | None:
        """The version whose artefact has this sha256, if one was registered."""
        return next((v for v in self.versions() if v.tags.get(SHA_TAG) == sha), None)

    def register(self, artefact: str | Path, tags: dict[str, Any],
                 experiment: str = "registry") -> Version:
        """A new version for the file ``artefact`` (the same file again: its version).

        The file is logged to the active MLflow run (kedro-mlflow's, during a ``kedro
        run``), or to a run of its own in ``experiment``."""
        sha = file_sha256(artefact)
        known = self.find(sha)
        if known is not None:
            return known
        self._ensure_model()
        run = mlflow.active_run()
        run_id = run.info.run_id if run else self._own_run(experiment)
        self.client.log_artifact(run_id, str(artefact), ARTEFACT_DIR)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{ARTEFACT_DIR}"
        text = {key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                for key, value in {**tags, SHA_TAG: sha, "file": Path(artefact).name}.items()}
        created = self.client.create_model_version(self.name, source, run_id, tags=text)
        return Version.of(self.client.get_model_version(self.name, created.version))

    def _ensure_model(self) -> None:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(self.name)

    def _own_run(self, experiment: str) -> str:
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        run = self.client.create_run(experiment_id, run_name=f"register {self.name}")
        self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def get(self, reference: str | int) -> Version | None:
        """A version by number or alias; None when the alias is not set."""
        try:
            if str(reference).isdigit():
                found = self.client.get_model_version(self.name, str(reference))
            else:
                found = self.client.get_model_version_by_alias(self.name, str(reference))
        except MlflowException:
            return None
        return Version.of(found)

    def require(self, reference: str | int) -> Version:
        found = self.get(reference)
        if found is None:
            known = ", ".join(f"v{v.version}" + (f" ({', '.join(v.aliases)})" if v.aliases
                                                   else "") for v in self.versions())
            raise RegistryError(
                f"The registered model {self.name!r} has no version or alias {reference!r} "
                f"(it has: {known or 'no versions'}). Run `kedro run --pipeline retrain` "
                "to train and register one.")
        return found

    def set_alias(self, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(self.name, alias, str(version))

    def tag(self, version: int, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            self.client.set_model_version_tag(self.name, str(version), key, text)

    def write_text(self, version: Version, path: str, text: str) -> None:
        """A text artefact beside the version's file, in the run that registered it."""
        self.client.log_text(version.run_id, text, path)

    def read_text(self, version: Version, path: str) -> str | None:
        """``write_text``'s text, or None where the version has none."""
        with tempfile.TemporaryDirectory() as folder:
            try:
                return Path(self.client.download_artifacts(version.run_id, path, folder)
                            ).read_text()
            except (MlflowException, OSError):
                return None

    def download(self, version: Version, folder: str | Path | None = None) -> Path:
        """The version's artefact file, downloaded (a local store: copied)."""
        folder = Path(folder or tempfile.mkdtemp(prefix="registry_"))
        self.client.download_artifacts(version.run_id, ARTEFACT_DIR, str(folder))
        return folder / ARTEFACT_DIR / version.tags["file"]

    def rollback(self, version: int | None = None) -> Version:
        """Point ``champion`` at ``version``, or at the one promoted before the current."""
        if version is None:
            promoted = [v.version for v in self.versions() if v.tags.get("decision") == "promoted"]
            current = self.require(CHAMPION).version
            earlier = [v for v in promoted if v < current]
            if not earlier:
                raise RegistryError(f"{self.name!r}: no version was promoted before "
                                    f"v{current}; name the version to roll back to.")
            version = earlier[-1]
        self.require(version)
        self.set_alias(CHAMPION, version)
        return self.require(CHAMPION)
