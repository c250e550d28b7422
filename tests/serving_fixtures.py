"""Fixtures for the serving tests: nst-devserver started once per session, and its model folder.

Test modules load this with `pytest_plugins = ["serving_fixtures"]` (and import helpers from
helpers.py), so the server is one process for the whole session, whichever modules ask.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import select
import subprocess
import time
from collections.abc import Iterator, Sequence

import pytest
from helpers import SERVED_VERSIONS, quiet_env, script

START_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def model_base(exported, tmp_path_factory) -> pathlib.Path:
    """A model base folder `.../nst` holding versions 1 and 3, both the exported test model."""
    base = tmp_path_factory.mktemp("served") / "nst"
    base.mkdir()
    for version in SERVED_VERSIONS:
        (base / str(version)).symlink_to(exported, target_is_directory=True)
    return base


@pytest.fixture(scope="session")
def devserver(model_base, tmp_path_factory) -> dict:
    """nst-devserver on a free loopback port: {"address": "127.0.0.1:PORT", "banner": first line, ...}."""
    with running_devserver(model_base, tmp_path_factory.mktemp("devserver") / "stderr.log") as server:
        yield server


@contextlib.contextmanager
def running_devserver(model_base: pathlib.Path, log: pathlib.Path, *flags: str) -> Iterator[dict]:
    """nst-devserver with `flags`, stopped on exit: {"address", "banner", "process", "log"}; stderr goes to `log`."""
    with running_devservers(model_base, [log], *flags) as (server,):
        yield server


@contextlib.contextmanager
def running_devservers(
    model_base: pathlib.Path, logs: Sequence[pathlib.Path], *flags: str, program: Sequence[str] = ()
) -> Iterator[list[dict]]:
    """One nst-devserver per log, all started before any is waited for (their start-ups overlap), stopped on
    exit; `program` replaces the nst-devserver command (a wrapper that takes the same arguments)."""
    program = list(program) or [script("nst-devserver")]
    processes = []
    try:
        for log in logs:
            with log.open("w") as stderr:
                processes.append(
                    subprocess.Popen(
                        [*program, "--model-dir", str(model_base), "--port", "0", *flags],
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                        text=True,
                        env=quiet_env(),
                    )
                )
        servers = []
        deadline = time.monotonic() + START_TIMEOUT_S * len(logs)  # they share the machine while they start
        for process, log in zip(processes, logs, strict=True):
            banner = _first_line(process, max(deadline - time.monotonic(), 0))
            match = re.search(r" on (\S+):(\d+);", banner)
            if not match:
                pytest.fail(f"nst-devserver did not start: {banner!r}\n{log.read_text()[-3000:]}")
            servers.append({"address": f"{match[1]}:{match[2]}", "banner": banner, "process": process, "log": log})
        yield servers
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _first_line(process: subprocess.Popen, timeout_s: float) -> str:
    """The server's first stdout line, printed once it listens; "" if it exits or stalls."""
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    return process.stdout.readline() if ready else ""
