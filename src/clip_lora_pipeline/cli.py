"""The project's ``kedro run``: Kedro's own command with ``FingerprintRunner`` as the
default runner, so a plain ``kedro run`` recomputes only what changed. Nodes named with
``--nodes`` or ``--from-nodes`` run whatever their fingerprints say: that is a request
to re-run them. ``--runner SequentialRunner`` gives Kedro's behaviour back. Before the
pipelines are built (which imports torch), ``quick_check`` may find that the last
complete run was this same command and that nothing has changed since: the run then
stops there.

Each run writes its log file (``logs``). An error the user can fix (``core.errors``)
ends the run with its message alone, its traceback going to that file; ``-v`` shows
every warning and log line, and the traceback."""

from __future__ import annotations

import copy
import functools
import logging
import os
import time
from pathlib import Path

import click
from kedro.framework.cli.project import run as kedro_run

from clip_lora_pipeline import logs
from clip_lora_pipeline.core.errors import UserError
from clip_lora_pipeline.quick_check import QuickCheck
from clip_lora_pipeline.runner import RECOMPUTE_ENV, truthy

DEFAULT_RUNNER = "clip_lora_pipeline.runner.FingerprintRunner"


def _with_default_runner(command: click.Command) -> click.Command:
    command = copy.copy(command)
    command.params = [copy.copy(param) for param in command.params]
    for param in command.params:
        if param.name == "runner":
            param.default = DEFAULT_RUNNER
            param.help = (f"The runner (default: {DEFAULT_RUNNER}, which skips nodes whose "
                          "inputs, parameters and code are unchanged).")
    command.params.append(click.Option(
        ["--verbose", "-v"], is_flag=True,
        help=f"Every warning and log line, and the traceback of any error (as {logs.VERBOSE_ENV}=1)."))
    command.callback = _logged(_forcing_named_nodes(command.callback))
    return command


def _logged(callback):
    """The run's log file around ``callback``; a user error ends it as one message."""
    @functools.wraps(callback)
    def run(verbose: bool = False, **kwargs):
        if verbose:
            os.environ[logs.VERBOSE_ENV] = "1"
            logs.setup()
        opened = logs.open_run_log()
        try:
            return callback(**kwargs)
        except Exception as error:
            logs.to_run_log("The run stopped:", logging.ERROR, error)
            found = logs.user_error(error)
            if found is None or logs.verbose():
                raise
            raise click.ClickException(stopped_message(found, logs.run_log())) from None
        finally:
            if opened:
                logs.close_run_log()
    return run


def stopped_message(error: UserError, log: Path | None) -> str:
    where = f"its traceback is in {log}; " if log else ""
    return f"{error}\n({type(error).__name__}: {where}`kedro run -v` prints it.)"


def _forcing_named_nodes(callback):
    @functools.wraps(callback)
    def run(**kwargs):
        start = time.perf_counter()
        named = kwargs.get("node_names") or kwargs.get("from_nodes")
        if named and kwargs.get("runner") in (None, DEFAULT_RUNNER):
            kwargs["runner_params"] = {"recompute": "true", **(kwargs.get("runner_params") or {})}
        check = _quick_check(kwargs)
        if check is None:
            return callback(**kwargs)
        if check.unchanged():
            check.report(time.perf_counter() - start)
            return {}
        check.forget()  # until this run completes, nothing is known to be up to date
        result = callback(**kwargs)
        check.save()
        return result
    return run


def _quick_check(options: dict):
    """The quick check (``quick_check``) where the fingerprint runner would decide, and
    nothing asks for a recompute."""
    runner_params = options.get("runner_params") or {}
    if options.get("runner") not in (None, DEFAULT_RUNNER) or truthy(
            runner_params.get("recompute", "")) or truthy(os.environ.get(RECOMPUTE_ENV, "")):
        return None
    return QuickCheck(options, runner_params.get("records"))


@click.group(name="clip-lora-pipeline")
def cli() -> None:
    """Project commands."""


cli.add_command(_with_default_runner(kedro_run), "run")


@cli.command()
@click.argument("name")
@click.option("--version", type=int, default=None,
              help="The version to make champion (default: the one promoted before it).")
@click.option("--env", "-e", default=None, help="The Kedro environment (its mlflow.yml).")
def rollback(name: str, version: int | None, env: str | None) -> None:
    """Point the `champion` alias of the registered model NAME (<dataset>-<method>) back.
    No version is deleted; `retrain` and `predict` use the alias from then on."""
    from kedro.framework.session import KedroSession

    from clip_lora_pipeline.core.registry import Registry, RegistryError

    with KedroSession.create(env=env) as session:
        session.load_context()  # kedro-mlflow sets the tracking URI of mlflow.yml
        try:
            champion = Registry(name).rollback(version)
        except RegistryError as error:
            raise click.ClickException(str(error)) from None
    click.echo(f"{name}: champion is now version {champion.version}.")
