"""nst-client in a fleet: a chunked run through three nst-devserver replicas, one of them SIGKILLed while it
runs a chunk. The chunk is sent again to another replica, the run goes on from its last finished chunk, and
the PNG is the one a single healthy server gives, byte for byte; the calls went round-robin to every replica.

Each replica records when a Predict call starts and ends (helpers.RECORDING_DEVSERVER), so the test
knows which one is running a chunk without timing anything.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import sys

import pytest
from helpers import RECORDING_DEVSERVER, recorded_calls, wait_for
from serving_fixtures import running_devservers

from nst_client import NSTClient

STEPS, CHUNK = 30, 5  # 6 chunks of 5 L-BFGS steps (long enough to be caught running), after 2 decode calls
OPTIONS = {"max_dim": 32, "steps": STEPS}
CALLS = 2 + STEPS // CHUNK
RUN_TIMEOUT_S = 600  # bounds on the waits, not timings: the machine may be busy


@pytest.fixture
def one_version(exported, tmp_path) -> pathlib.Path:
    """A model base holding version 1 only: each replica loads and warms one version, not the two of model_base."""
    base = tmp_path / "nst"
    base.mkdir()
    (base / "1").symlink_to(exported, target_is_directory=True)
    return base


@pytest.mark.slow
def test_a_replica_killed_mid_chunk_costs_one_chunk_and_nothing_else(one_version, tmp_path, content_png, style_png):
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    logs = [tmp_path / f"replica{i}.log" for i in range(3)]
    program = [sys.executable, "-c", RECORDING_DEVSERVER, str(calls_dir)]
    with running_devservers(one_version, logs, program=program) as replicas:
        pids = [replica["process"].pid for replica in replicas]
        progress: list[int] = []
        running: list[int] = []  # the replica (index) caught running a chunk

        with (
            NSTClient(",".join(replica["address"] for replica in replicas), timeout=RUN_TIMEOUT_S) as client,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):

            def report(done: int, total: int, loss: float) -> None:
                progress.append(done)

            run = pool.submit(client.run, content_png, style_png, chunk=CHUNK, progress=report, **OPTIONS)

            def a_middle_chunk_is_running() -> bool:
                if len(progress) >= 3:  # the start and two chunks reported: the run is in its middle
                    running[:] = [i for i, pid in enumerate(pids) if _in_flight(calls_dir, pid)]
                return bool(running) or run.done()

            wait_for(a_middle_chunk_is_running, timeout_s=RUN_TIMEOUT_S)
            assert running, f"the run ended before a chunk was caught running: {run.result()}"
            victim = replicas[running[0]]["process"]
            victim.kill()  # SIGKILL: no goodbye to the client
            victim.wait()
            result = run.result(timeout=RUN_TIMEOUT_S)

        counts = [recorded_calls(calls_dir, pid) for pid in pids]  # (started, answered) by each replica
        killed, survivors = counts[running[0]], [c for i, c in enumerate(counts) if i != running[0]]
        assert killed[0] == killed[1] + 1, f"the killed replica had finished its chunk: {counts}"
        assert all(started == ended >= 1 for started, ended in survivors), f"calls not spread: {counts}"
        assert sum(started for started, _ in counts) == CALLS + 1, f"not one call sent again: {counts}"
        survivor = replicas[(running[0] + 1) % len(replicas)]["address"]
        with NSTClient(survivor, timeout=RUN_TIMEOUT_S) as healthy:
            assert result.png == healthy.run(content_png, style_png, chunk=0, **OPTIONS).png


def _in_flight(calls_dir: pathlib.Path, pid: int) -> bool:
    started, ended = recorded_calls(calls_dir, pid)
    return started > ended
