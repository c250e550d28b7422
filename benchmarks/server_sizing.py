"""The figures deploy/sizing.json needs, measured on a real server over gRPC: time per step at 512 and
2048 px (Adam and L-BFGS), a chunk call's fixed work, and the server's memory before any call and at
its peak with `--calls` runs at the largest size at once.

    python benchmarks/server_sizing.py --server HOST:8500 --cpus 4 \\
        --memory-command "kubectl -n nst top pod POD --no-headers"

Run it against one replica (a pod's address, or kubectl port-forward to one pod) that nothing else
calls. Each size and optimiser is one run of 2 chunk calls and a shorter last call: the difference
between the two call lengths gives the time per step, and what is left of a call its fixed work (the
first call, which also computes the style targets, is left out). `--memory-command` prints the
server's memory (a figure such as 9876Mi); it runs before the first call and every few seconds while
the largest size runs. `kubectl top pod` reports the working set that metrics-server sampled last
(every 15 s or so), so it may miss a short peak; a command that reads the container's cgroup
(memory.peak) does not. With `--calls N` the server must admit N gRPC calls at once
(`--grpc_max_threads=N+1`). The images are random pixels, 4:3, as the README's table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import re
import subprocess
import threading
import time

import numpy as np

from nst_client import NSTClient

UNITS = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10}


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of a full chunk call (`chunk` steps) and of a run's shorter last call (`last` steps)."""

    chunk: int
    last: int
    chunk_call_s: float
    last_call_s: float

    @property
    def step_s(self) -> float:
        return (self.chunk_call_s - self.last_call_s) / (self.chunk - self.last)

    @property
    def call_s(self) -> float:
        """A call's fixed work: decoding, encoding the PNG, handing the state over."""
        return self.chunk_call_s - self.chunk * self.step_s


def gib(text: str) -> float:
    """The first memory figure (Ki, Mi, Gi or Ti) in a command's output, in GiB."""
    found = re.search(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)\b", text)
    if not found:
        raise ValueError(f"no memory figure such as 9876Mi in the memory command's output: {text.strip()!r}")
    return float(found.group(1)) * UNITS[found.group(2)]


def fields(
    adam: Timing, lbfgs: Timing, *, baseline_gib: float | None, peak_gib: float | None, calls: int, cpus: int
) -> dict[str, float]:
    """deploy/sizing.json's measured fields, from timings at the largest size and the server's memory."""
    result = {
        "adam_seconds_per_step_at_largest": round(adam.step_s, 2),
        "lbfgs_step_in_adam_steps": round(lbfgs.step_s / adam.step_s, 2),
        "call_overhead_in_adam_steps": round(lbfgs.call_s / adam.step_s, 1),
        "benchmark_cpus": cpus,
    }
    if baseline_gib is not None and peak_gib is not None:
        result["baseline_gib"] = round(baseline_gib, 1)
        result["request_gib_at_largest"] = round((peak_gib - baseline_gib) / calls, 1)
    return result


def timed_run(client: NSTClient, size: int, optimizer: str, chunk: int) -> Timing:
    """One run of 2 calls of `chunk` steps and a last call of half as many, timed call by call."""
    last = max(1, chunk // 2)
    marks: list[float] = []
    rng = np.random.default_rng(size)
    content, style = (rng.integers(0, 256, (size * 3 // 4, size, 3), np.uint8) for _ in range(2))
    client.run(
        content,
        style,
        chunk=chunk,
        steps=2 * chunk + last,
        max_dim=size,
        optimizer=optimizer,
        progress=lambda done, steps, loss: marks.append(time.monotonic()),
    )
    # marks: before the first call, then after each of the 3 calls.
    return Timing(chunk, last, marks[2] - marks[1], marks[3] - marks[2])


class MemoryWatch:
    """Runs the memory command every `every` seconds in a thread and keeps the largest figure."""

    def __init__(self, command: str, every: float = 5.0):
        self.command, self.every, self.peak = command, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def read(self) -> float:
        out = subprocess.run(self.command, shell=True, capture_output=True, text=True, timeout=60, check=True)
        return gib(out.stdout)

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.read())

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, help="HOST:PORT of one replica's gRPC port")
    parser.add_argument("--cpus", type=int, required=True, help="the replica's CPU limit (sizing.json's cpus)")
    parser.add_argument("--memory-command", help="a shell command that prints the server's memory, e.g. 9876Mi")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[512, 2048], help="max_dim values (512 2048); the last gives the sizing"
    )
    parser.add_argument("--chunk", type=int, default=4, help="steps of each full call (4)")
    parser.add_argument("--calls", type=int, default=1, help="runs at once at the largest size, for memory (1)")
    parser.add_argument("--timeout", type=float, default=3600, help="deadline of each call, seconds (3600)")
    return parser


def main() -> None:
    args = parser().parse_args()
    client = NSTClient(args.server, timeout=args.timeout)
    watch = MemoryWatch(args.memory_command) if args.memory_command else None
    baseline = watch.read() if watch else None
    per_step: dict[int, dict[str, float]] = {}
    timings: dict[str, Timing] = {}
    for size in args.sizes:
        for optimizer in ("adam", "lbfgs"):
            timings[optimizer] = timed_run(client, size, optimizer, args.chunk)
            per_step.setdefault(size, {})[optimizer] = round(timings[optimizer].step_s, 3)
            print(f"{size} px {optimizer}: {timings[optimizer].step_s:.3f} s a step", flush=True)
    peak = None
    if watch:
        with watch, concurrent.futures.ThreadPoolExecutor(args.calls) as pool:
            runs = [pool.submit(timed_run, client, args.sizes[-1], "lbfgs", args.chunk) for _ in range(args.calls)]
            for run in runs:
                run.result()
        peak = watch.peak
    sizing = fields(
        timings["adam"], timings["lbfgs"], baseline_gib=baseline, peak_gib=peak, calls=args.calls, cpus=args.cpus
    )
    print(json.dumps({"seconds_per_step": per_step, "sizing.json": sizing}, indent=2))


if __name__ == "__main__":
    main()
