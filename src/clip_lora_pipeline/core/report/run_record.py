"""How a run was made: code version, library versions, hardware, and the settings,
prompts, splits and seeds behind the numbers, so a reader can reproduce or question
them from the report alone."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from clip_lora_pipeline.core.report.methods import method_description

# Distributions whose versions change results (kernels, defaults, solvers).
PACKAGES = ("torch", "torchvision", "open_clip_torch", "peft", "kedro", "kedro-datasets",
            "scikit-learn", "numpy")
UNKNOWN = "unknown"


def _git(project_dir: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(project_dir), *args], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):  # git missing or hanging
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(project_dir: Path) -> dict[str, Any]:
    """Commit of ``project_dir`` and whether the work tree differs from it (untracked,
    non-ignored files count: they can change the code that ran). Unknown outside git."""
    commit = _git(project_dir, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": UNKNOWN, "dirty": UNKNOWN}
    status = _git(project_dir, "status", "--porcelain")
    return {"commit": commit, "dirty": UNKNOWN if status is None else bool(status)}


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _cpu_model() -> str:
    try:  # Linux names the CPU here; platform.processor() is often just "x86_64"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN


def device_info() -> dict[str, Any]:
    """CUDA devices when torch sees any, else the CPU model."""
    try:
        import torch  # the report itself needs no torch: only ask when it is there
    except ImportError:
        return {"cuda": [], "cpu": _cpu_model()}
    cuda = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    return {"cuda": cuda, "cuda_version": torch.version.cuda, "cpu": _cpu_model()}


def environment_record(project_dir: Path) -> dict[str, Any]:
    """Git state, library versions, hardware and the date (UTC) of this run."""
    return {
        "git": git_state(Path(project_dir)),
        "versions": package_versions(),
        "device": device_info(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def split_counts(rejected: pd.DataFrame | None = None, **splits: pd.DataFrame) -> dict[str, int]:
    """Images per split (``train=..., val=..., test=...`` manifests), the number of
    classes across them, and the images rejected at validation."""
    counts = {name: len(frame) for name, frame in splits.items()}
    labels = set().union(*(set(frame["label"]) for frame in splits.values())) if splits else set()
    counts["classes"] = len(labels)
    if rejected is not None:
        counts["rejected"] = len(rejected)
    return counts


def run_record(environment: Mapping[str, Any], *, model: str, shots: int | None,
               seeds: Mapping[str, Any], methods: Mapping[str, Mapping[str, Any] | None],
               prompt_templates: Mapping[str, Any], splits: Mapping[str, Mapping[str, int]]
               ) -> dict[str, Any]:
    """What ``run_record_html`` renders. ``methods``: method -> its settings;
    ``prompt_templates``: prompt set -> templates, or -> {dataset: templates} where they
    differ per dataset; ``splits``: dataset -> ``split_counts(...)``."""
    return {"environment": dict(environment), "model": model, "shots": shots,
            "seeds": dict(seeds), "methods": dict(methods),
            "prompt_templates": dict(prompt_templates), "splits": dict(splits)}


class _Html(str):
    """A table cell that is already HTML (built from escaped parts)."""


def _text(value: Any, nested: bool = False) -> str:
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k}={_text(v, nested=True)}" for k, v in value.items())
        return f"{{{inner}}}" if nested else inner
    if isinstance(value, (list, tuple)):
        if len(value) > 8:  # e.g. a method's 80 templates: listed under prompt templates
            return f"[{_text(value[0])}, … {len(value)} items]"
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return "—" if value is None else str(value)


def _rows(pairs: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td>{c if isinstance(c, _Html) else escape(_text(c))}</td>" for c in row) + "</tr>"
        for row in pairs)
    return f'<table class="run-record"><tr>{head}</tr>{body}</table>'


def _environment_html(env: Mapping[str, Any]) -> str:
    git = env.get("git", {})
    device = env.get("device", {})
    hardware = ", ".join(device.get("cuda") or []) or f"CPU: {device.get('cpu', UNKNOWN)}"
    rows = [("git commit", git.get("commit", UNKNOWN)),
            ("uncommitted changes", git.get("dirty", UNKNOWN)),
            ("device", hardware), ("date (UTC)", env.get("date_utc", UNKNOWN)),
            *env.get("versions", {}).items()]
    return _rows(rows, ["", "value"])


def _template_list(templates: Sequence[str], shown: int = 4) -> _Html:
    """A few templates inline; long sets (80 for the ImageNet ensemble) fold the rest."""
    items = [escape(t) for t in templates]
    if len(items) <= shown:
        return _Html(" · ".join(items))
    return _Html(f"{' · '.join(items[:shown])} · <details><summary>all {len(items)}</summary>"
                 f"{'<br>'.join(items)}</details>")


def _templates_html(prompt_templates: Mapping[str, Any]) -> str:
    rows = []
    for prompt_set, templates in prompt_templates.items():
        per_dataset = templates if isinstance(templates, Mapping) else {"all datasets": templates}
        groups: dict[tuple[str, ...], list[str]] = {}  # datasets sharing the same templates
        for dataset, listed in per_dataset.items():
            groups.setdefault(tuple(listed), []).append(dataset)
        rows += [(prompt_set, ", ".join(datasets), len(t), _template_list(t))
                 for t, datasets in groups.items()]
    return _rows(rows, ["prompt set", "datasets", "templates", "text"])


def _splits_html(splits: Mapping[str, Mapping[str, int]]) -> str:
    columns = list(dict.fromkeys(k for counts in splits.values() for k in counts))
    rows = [(d, *(counts.get(c, "—") for c in columns)) for d, counts in splits.items()]
    return _rows(rows, ["dataset", *columns])


def run_record_html(record: Mapping[str, Any]) -> str:
    """The record as a readable HTML section, every value escaped."""
    methods = record.get("methods", {})
    method_rows = [(m, method_description(m, s), s or {}) for m, s in methods.items()]
    seeds = {"shots": record.get("shots"), **record.get("seeds", {})}
    return (
        '<section id="run-record"><h2>How this run was made</h2>'
        f"<p class='meta'>model: {escape(_text(record.get('model')))} · "
        f"{escape(_text(seeds))}</p>"
        f"<h3>Methods</h3>{_rows(method_rows, ['method', 'what it is', 'settings'])}"
        f"<h3>Data</h3>{_splits_html(record.get('splits', {}))}"
        f"<h3>Prompt templates</h3>{_templates_html(record.get('prompt_templates', {}))}"
        f"<h3>Environment</h3>{_environment_html(record.get('environment', {}))}</section>"
    )
