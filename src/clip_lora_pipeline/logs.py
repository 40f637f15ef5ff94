"""What a run prints and what it keeps. ``settings.py`` calls ``setup`` as Kedro loads
the project, before the plugins' commands are imported (kedro-mlflow's warns then).

- Quiet by default: the known warnings of the libraries under this project, which a
  user cannot act on, are filtered by message and module; on the console, this project
  logs at INFO and every other library at WARNING and above, less the known noise
  (``QuietConsole``). Our own warnings, and any new ones, still show.
  ``CLIP_LORA_VERBOSE=1`` shows all of it (so does ``kedro run -v``, from the moment the
  command is parsed: a plugin's warning at import comes before that).
- Output that is not a terminal (CI, Airflow, ``> run.txt``): plain lines, never
  wrapped, and Python's own tracebacks, instead of Kedro's rich console laid out for 80
  columns.
- A log file per run, ``data/09_logs/<date>_<time>_<pid>.log``, with what the console
  leaves out: every library's messages and the traceback of an error (``log_error``).

Kedro 1.7 only takes logging classes from ``logging`` and ``kedro.logging`` in
conf/logging.yml (unless ``KEDRO_LOGGING_MODULE_ALLOWLIST`` names a module), hence this
module rather than handlers declared there.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path

from kedro.framework.hooks import hook_impl
from rich.logging import RichHandler

from clip_lora_pipeline.core.errors import UserError
from clip_lora_pipeline.runner import truthy

VERBOSE_ENV = "CLIP_LORA_VERBOSE"
LOG_DIR = Path("data/09_logs")
PACKAGE = "clip_lora_pipeline"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# (message, module) regular expressions, matched from their start, of warnings that the
# libraries raise about each other.
THIRD_PARTY_WARNINGS = (
    # OmegaConf 2.4 deprecates the call Kedro and kedro-mlflow make for each resolver.
    (r"register_new_resolver\(\) is deprecated", r"kedro(_mlflow)?\."),
    # Kedro's own namespaces put the dots in this project's dataset names.
    (r"One or more dataset names contain '\.' characters", r"kedro\.pipeline"),
    # mlflow's registry tables on SQLAlchemy 2.1.
    (r"The ``noload`` loader strategy is deprecated", r"mlflow\."),
)

# (logger prefix, message) of log records the console leaves out (the file keeps them).
NOISY_LOGS = (
    # Kedro cannot validate this project's `str | list` parameters: it passes them as
    # they are, as intended.
    ("kedro", r"Union type hint .* is not supported for validation"),
    # kedro-viz records a run's events for its UI only for a plain full run.
    ("kedro_viz", r"Workflow tracking is disabled"),
    # open_clip, on the root logger; this project's models.py says so already.
    ("root", r"No pretrained weights loaded for model"),
    # mlflow asks kedro-mlflow (KedroPipelineModel) for type hints under a "once" filter
    # of its own, which overrides THIRD_PARTY_WARNINGS: caught here, as a logged warning.
    ("py.warnings", r".*[/\\]mlflow[/\\]pyfunc[/\\].*Add type hints to the `predict` method"),
    # Kedro's runner logs under its subclass's module; the summary says it next.
    ("clip_lora_pipeline.runner", r"Pipeline execution completed successfully"),
    # The next node's "Running" line says as much; the file keeps each node's end.
    ("clip_lora_pipeline.runner", r"Completed node: "),
)


def verbose() -> bool:
    return truthy(os.environ.get(VERBOSE_ENV, ""))


def ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def user_error(error: BaseException) -> UserError | None:
    """The ``UserError`` that ``error`` is, or was raised from (``raise ... from``)."""
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__
    return error


class QuietConsole(logging.Filter):
    """The console's share of the log, unless verbose: this project's lines, and every
    other library's warnings and errors less ``NOISY_LOGS``. While a user error is being
    handled, only this project's lines: Kedro's and the plugins' reports of the failure
    would repeat the message the run ends with."""

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose():
            return True
        message = record.getMessage()
        if any(record.name.startswith(prefix) and re.match(pattern, message)
               for prefix, pattern in NOISY_LOGS):
            return False
        return ours(record.name) or (record.levelno >= logging.WARNING and not isinstance(
            sys.exc_info()[1], UserError))


_QUIET = QuietConsole()


def setup() -> None:
    """Quiet warnings, a quiet console, and plain lines when it is not a terminal.
    Called again by ``kedro run -v``, once ``CLIP_LORA_VERBOSE`` is set."""
    _filter_warnings(quiet=not verbose())
    # mlflow logs to a handler of its own (its database's migrations, on first use)
    logging.getLogger("mlflow").setLevel(logging.INFO if verbose() else logging.WARNING)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, RichHandler) and _redirected(handler):
            root.removeHandler(handler)
            root.addHandler(_plain(handler.level))
            # rich's traceback, installed by Kedro's handler, is laid out for 80 columns
            sys.excepthook = sys.__excepthook__
    for handler in root.handlers:
        if not isinstance(handler, logging.FileHandler) and _QUIET not in handler.filters:
            handler.addFilter(_QUIET)


def _filter_warnings(quiet: bool) -> None:
    ignored = [("ignore", re.compile(message, re.I), Warning, re.compile(module), 0)
               for message, module in THIRD_PARTY_WARNINGS]
    warnings.filters[:] = [f for f in warnings.filters if f not in ignored]
    if quiet:
        for message, module in THIRD_PARTY_WARNINGS:
            warnings.filterwarnings("ignore", message, Warning, module)


def _redirected(handler: RichHandler) -> bool:
    return not handler.console.is_terminal and not handler.console.is_jupyter


def _plain(level: int) -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT, "%H:%M:%S"))
    return handler


# The run's log file --------------------------------------------------------------------
_file: logging.FileHandler | None = None


def open_run_log(folder: Path = LOG_DIR) -> bool:
    """Start this run's log file; False when one is open already (the ``kedro run``
    command opens it before the session's hook would)."""
    global _file  # noqa: PLW0603
    if _file is not None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}.log"
    _file = logging.FileHandler(folder / name, encoding="utf-8")
    _file.setFormatter(logging.Formatter(FILE_FORMAT))
    logging.getLogger().addHandler(_file)
    return True


def run_log() -> Path | None:
    """The open log file, relative to the project when it is inside it."""
    if _file is None:
        return None
    path = Path(_file.baseFilename)
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def to_run_log(message: str, level: int = logging.INFO,
               error: BaseException | None = None) -> None:
    """A record for the log file alone (the console shows it otherwise, or not at all)."""
    if _file is not None:
        exc_info = (type(error), error, error.__traceback__) if error is not None else None
        _file.handle(logging.LogRecord(PACKAGE, level, __file__, 0, message, None, exc_info))


def close_run_log() -> None:
    global _file  # noqa: PLW0603
    if _file is not None:
        logging.getLogger().removeHandler(_file)
        _file.close()
        _file = None


class RunLogHooks:
    """The log file of a run started from a session rather than ``kedro run`` (a
    notebook, an orchestrator), with the traceback of the error that stopped it."""

    def __init__(self) -> None:
        self._opened = False

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._opened = open_run_log()

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._opened:
            close_run_log()

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        if self._opened:
            to_run_log("The run stopped:", logging.ERROR, error)
            close_run_log()
