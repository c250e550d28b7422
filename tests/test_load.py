"""Many callers, few replicas: runs wait for a free replica instead of failing (benchmarks/load.py).

Two dev servers admit one call each and queue none, as the stock server does as deployed; six chunked
runs start at once from separate nst-client processes. Every run must finish, its PNG byte-equal to
the same run made alone, and the servers' refusals must have made runs wait.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from helpers import quiet_env

pytest_plugins = ["serving_fixtures"]

LOAD = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "load.py"


@pytest.mark.timeout(1200)
def test_six_callers_on_two_replicas_all_finish_with_the_lone_runs_bytes(model_base, tmp_path):
    figures = tmp_path / "load.json"
    command = [sys.executable, LOAD, "--model-dir", model_base, "--servers", "2", "--runs", "6"]
    command += ["--steps", "8", "--chunk", "2", "--size", "32", "--json", figures]
    done = subprocess.run(command, capture_output=True, text=True, env=quiet_env(), timeout=1100)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(figures.read_text())
    assert result["finished"] == result["equal"] == 6, result["runs_detail"]
    assert result["longest_wait_s"] > 0, "no run waited: the test did not load the replicas"
    assert "wait for a free replica: longest of a run" in done.stdout
