"""The closing lines of every run: how many nodes ran and how many were reused, the wall
time, the best method per dataset with its top-1 accuracy, the report (a ``file://``
link on a terminal, which makes it clickable) and the log file. ``RunSummary`` prints
them after the pipeline; ``quick_check`` after a run it stopped before the pipelines."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import click
from kedro.framework.hooks import hook_impl
from upath import UPath

from clip_lora_pipeline import logs
from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.durations import duration

# The file names of conf/base/catalog.yml's "{cell}.comparison_table__{datasets}" and
# "{cell}.report__{datasets}" (a dataset's report_section.html is a part of the latter).
COMPARISON = re.compile(r"comparison_.+\.parquet")
REPORT = re.compile(r"report_(?!section\.html$).+\.html")
MOST = 6  # lines of best methods and reports; a sweep has a comparison per cell


def best_methods(comparison: Path | UPath) -> list[str]:
    """One line per dataset of a comparison table: its best method by top-1."""
    import pandas as pd

    with storage.open_for_read(comparison) as handle:  # fsspec's settings, not pyarrow's
        table = pd.read_parquet(handle)
    cell = comparison.parent.name  # data/08_reporting/<model>/<cell>/comparison_*.parquet
    lines = []
    for dataset, rows in table.groupby("dataset", sort=False):
        best = rows.loc[rows["top1"].idxmax()]
        interval = (f" (95% CI {best['top1_ci_low']:.1%}-{best['top1_ci_high']:.1%})"
                    if "top1_ci_low" in best else "")
        methods = f"{len(rows)} method" + ("s" if len(rows) > 1 else "")
        lines.append(f"  {dataset}, {cell}: {best['method']} {best['top1']:.1%} top-1"
                     f"{interval}, of {methods}")
    return lines


def link(path: Path | UPath, terminal: bool) -> str:
    if storage.is_remote(path):
        return str(path)
    if terminal:
        return path.resolve().as_uri()
    return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


def summary_lines(ran: int, total: int, seconds: float, paths: Iterable[str | Path],
                  terminal: bool) -> list[str]:
    paths = [storage.data_path(p) for p in paths if storage.is_file(p)]
    lines = [f"Run complete in {duration(seconds)}: {ran} of {total} nodes ran, "
             f"{total - ran} reused (up to date)."]
    best = [line for p in paths if COMPARISON.fullmatch(p.name) for line in best_methods(p)]
    if best:
        lines.append("Best method per dataset (top-1 accuracy on the test split):")
        lines += best[:MOST] + ([f"  ... and {len(best) - MOST} more"] if len(best) > MOST
                                else [])
    reports = [p for p in paths if REPORT.fullmatch(p.name)]
    lines += [f"Report: {link(p, terminal)}" for p in reports[:MOST]]
    if (log := logs.run_log()) is not None:
        lines.append(f"Log: {log}")
    return lines


def print_summary(lines: list[str]) -> None:
    """On the console as they are, never wrapped, and into the run's log file."""
    for line in lines:
        click.echo(line)
    logs.to_run_log("\n".join(lines))


class RunSummary:
    def __init__(self) -> None:
        self._start, self._ran = time.perf_counter(), 0

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._start, self._ran = time.perf_counter(), 0

    @hook_impl
    def after_node_run(self) -> None:
        self._ran += 1  # the fingerprint runner skips a reused node without its hooks

    @hook_impl
    def after_pipeline_run(self, pipeline, catalog) -> None:
        paths = [path for name in sorted(pipeline.all_outputs())
                 if (path := _filepath(catalog, name)) is not None]
        print_summary(summary_lines(self._ran, len(pipeline.nodes),
                                    time.perf_counter() - self._start, paths,
                                    sys.stdout.isatty()))


def _filepath(catalog, name: str) -> str | None:
    dataset = catalog.get(name, fallback_to_runtime_pattern=True)
    return storage.described_location(getattr(dataset, "_describe", dict)())
