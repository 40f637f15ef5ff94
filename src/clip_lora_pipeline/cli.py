"""The project's ``kedro run``: Kedro's own command with ``FingerprintRunner`` as the
default runner, so a plain ``kedro run`` recomputes only what changed. Nodes named with
``--nodes`` or ``--from-nodes`` run whatever their fingerprints say: that is a request
to re-run them. ``--runner SequentialRunner`` gives Kedro's behaviour back."""

from __future__ import annotations

import copy
import functools

import click
from kedro.framework.cli.project import run as kedro_run

DEFAULT_RUNNER = "clip_lora_pipeline.runner.FingerprintRunner"


def _with_default_runner(command: click.Command) -> click.Command:
    command = copy.copy(command)
    command.params = [copy.copy(param) for param in command.params]
    for param in command.params:
        if param.name == "runner":
            param.default = DEFAULT_RUNNER
            param.help = (f"The runner (default: {DEFAULT_RUNNER}, which skips nodes whose "
                          "inputs, parameters and code are unchanged).")
    command.callback = _forcing_named_nodes(command.callback)
    return command


def _forcing_named_nodes(callback):
    @functools.wraps(callback)
    def run(**kwargs):
        named = kwargs.get("node_names") or kwargs.get("from_nodes")
        if named and kwargs.get("runner") in (None, DEFAULT_RUNNER):
            kwargs["runner_params"] = {"recompute": "true", **(kwargs.get("runner_params") or {})}
        return callback(**kwargs)
    return run


@click.group(name="clip-lora-pipeline")
def cli() -> None:
    """Project commands."""


cli.add_command(_with_default_runner(kedro_run), "run")
