"""What a run prints: the quiet console and warnings, a user error as one message with
its traceback in the run's log file, and the closing summary."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import click
import pandas as pd
import pytest

from clip_lora_pipeline import logs
from clip_lora_pipeline.cli import _logged
from clip_lora_pipeline.core.download import DownloadError
from clip_lora_pipeline.core.errors import SettingsError
from clip_lora_pipeline.summary import summary_lines


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    return logs.QuietConsole()


def test_the_console_shows_our_lines_and_other_libraries_warnings(quiet):
    assert quiet.filter(_record("clip_lora_pipeline.runner", logging.INFO, "Running x"))
    assert quiet.filter(_record("torch", logging.WARNING, "something new"))
    assert not quiet.filter(_record("kedro.io.data_catalog", logging.INFO, "Loading data"))
    assert not quiet.filter(_record(
        "kedro.validation.type_extractor", logging.WARNING,
        "Union type hint (str | list) is not supported for validation."))


def test_verbose_shows_everything(quiet, monkeypatch):
    monkeypatch.setenv(logs.VERBOSE_ENV, "1")
    assert quiet.filter(_record("kedro.io.data_catalog", logging.INFO, "Loading data"))


def test_while_a_user_error_is_handled_only_our_lines_show(quiet):
    try:
        raise DownloadError("no network")
    except DownloadError:
        assert not quiet.filter(_record("kedro.pipeline.node", logging.ERROR, "Node failed"))
        assert quiet.filter(_record("clip_lora_pipeline.hooks", logging.ERROR, "saved"))


def test_known_library_warnings_are_ignored_by_module_and_ours_still_show(monkeypatch):
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    message = "register_new_resolver() is deprecated and will be removed"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logs._filter_warnings(quiet=True)
        warnings.warn_explicit(message, UserWarning, "omegaconf_config.py", 1,
                               module="kedro.config.omegaconf_config")
        warnings.warn_explicit(message, UserWarning, "mine.py", 1,
                               module="clip_lora_pipeline.mine")
        logs._filter_warnings(quiet=False)  # -v: the filters go
        warnings.warn_explicit(message, UserWarning, "omegaconf_config.py", 2,
                               module="kedro.config.omegaconf_config")
    assert [w.filename for w in caught] == ["mine.py", "omegaconf_config.py"]


def test_a_user_error_ends_the_run_as_one_message_and_keeps_its_traceback(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)

    def run():
        try:
            raise OSError("Connection refused")
        except OSError as exc:
            raise DownloadError("Could not download x; place it at data/01_raw/x.") from exc

    with pytest.raises(click.ClickException) as stopped:
        _logged(run)()
    message = stopped.value.format_message()
    assert message.startswith("Could not download x; place it at data/01_raw/x.\n"
                              "(DownloadError: its traceback is in data/09_logs/")
    kept = (tmp_path / message.split("traceback is in ")[1].split(";")[0]).read_text()
    assert "Traceback" in kept and "OSError: Connection refused" in kept
    assert logs.run_log() is None  # closed with the run


@pytest.mark.parametrize("error", [RuntimeError("a bug"), SettingsError("shots: bad")])
def test_a_bug_and_any_error_with_verbose_keep_their_traceback(tmp_path, monkeypatch, error):
    monkeypatch.chdir(tmp_path)
    # -v sets the variable in os.environ; setenv records it as unset, so teardown removes
    # it (delenv would record the "1" and put it back, making every later run verbose)
    monkeypatch.setenv(logs.VERBOSE_ENV, "")
    verbose = isinstance(error, SettingsError)

    def run():
        raise error

    with pytest.raises(type(error)):
        _logged(run)(verbose=verbose)
    monkeypatch.setenv(logs.VERBOSE_ENV, "")
    logs.setup()  # quiet again for the tests after this one


def _comparison(folder: Path) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame({
        "dataset": ["flowers102", "flowers102", "eurosat"],
        "method": ["zero_shot_simple", "lora", "linear_probe"],
        "top1": [0.70, 0.95, 0.81], "top1_ci_low": [0.68, 0.94, 0.79],
        "top1_ci_high": [0.72, 0.96, 0.83],
    }).to_parquet(folder / "comparison_flowers102+eurosat.parquet")
    (folder / "report_flowers102+eurosat.html").write_text("<html>")
    (folder / "flowers102").mkdir()
    (folder / "flowers102/report_section.html").write_text("<div>")
    return folder


def test_the_summary_names_the_best_method_per_dataset_and_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cell = _comparison(Path("data/08_reporting/ViT-B-16__openai/shots_16_seed_1"))
    paths = [*cell.rglob("*"), "data/never_written.json"]
    lines = summary_lines(3, 40, 75.2, paths, terminal=False)
    assert lines == [
        "Run complete in 1 min 15 s: 3 of 40 nodes ran, 37 reused (up to date).",
        "Best method per dataset (top-1 accuracy on the test split):",
        "  flowers102, shots_16_seed_1: lora 95.0% top-1 (95% CI 94.0%-96.0%), of 2 methods",
        "  eurosat, shots_16_seed_1: linear_probe 81.0% top-1 (95% CI 79.0%-83.0%), of 1 method",
        f"Report: {cell / 'report_flowers102+eurosat.html'}",
    ]
    on_terminal = summary_lines(3, 40, 75.2, paths, terminal=True)
    report = tmp_path / cell / "report_flowers102+eurosat.html"
    assert on_terminal[-1] == f"Report: {report.as_uri()}"


def test_output_that_is_not_a_terminal_gets_plain_lines(monkeypatch):
    from kedro.logging import RichHandler

    root = logging.getLogger()
    rich = RichHandler()
    monkeypatch.setattr(root, "handlers", [rich])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    logs.setup()
    (plain,) = root.handlers
    assert type(plain) is logging.StreamHandler and plain.stream is sys.stdout
    assert logs._QUIET in plain.filters
    assert sys.excepthook is sys.__excepthook__
