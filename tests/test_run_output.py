"""End to end: what ``kedro run`` prints. The smoke run is quiet and closes with its
summary; a missing download ends the run with its message alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import SMOKE_OUTPUT, copy_project

# What the libraries' warnings look like once Kedro has logged them.
THIRD_PARTY = re.compile(r"DeprecationWarning|FutureWarning|UserWarning|is deprecated|"
                         r"register_new_resolver|Union type hint|Workflow tracking")


@pytest.mark.slow
def test_the_smoke_run_prints_no_library_warnings_and_ends_with_its_summary(smoke_project):
    output = (smoke_project / SMOKE_OUTPUT).read_text()
    assert not THIRD_PARTY.findall(output), [
        line for line in output.splitlines() if THIRD_PARTY.search(line)][:5]
    # The summary closes stdout (tqdm's bars go to stderr), each line whole.
    stdout_end = output[:output.rindex("Log: data/09_logs/")].splitlines()[-4:]
    assert re.match(r"Run complete in .*: (\d+) of \1 nodes ran, 0 reused", stdout_end[0])
    assert stdout_end[1] == "Best method per dataset (top-1 accuracy on the test split):"
    assert re.fullmatch(r"  synthetic, shots_8_seed_1: \w+ \d+\.\d% top-1 .*", stdout_end[2])
    assert stdout_end[3] == ("Report: data/08_reporting/clip-lora-tiny__random/shots_8_seed_1/"
                             "report_synthetic.html")
    log = re.search(r"^Log: (data/09_logs/\S+\.log)$", output, re.M)
    assert log and "Completed node: shots_8_seed_1.report" in (smoke_project / log[1]).read_text()


@pytest.mark.slow
def test_a_missing_download_prints_its_message_alone(tmp_path):
    project = copy_project(tmp_path / "project")
    # Any proxy on a closed loopback port: the download fails at once, network or not.
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "NO_PROXY": "", "no_proxy": "",
           **{key: closed for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}}
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--nodes", "flowers102.download"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert len(output.splitlines()) < 15, output
    assert "Traceback" not in output
    assert "place it at data/01_raw/flowers102/102flowers.tgz" in output
    log = re.search(r"its traceback is in (\S+\.log)", output)
    assert log, output
    kept = (project / log[1]).read_text()
    assert "Traceback" in kept and "DownloadError: Could not download" in kept
