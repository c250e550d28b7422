"""Many callers, few replicas: runs started at once on more callers than there are replicas.

Each replica is an nst-devserver that admits what the stock server admits as deployed: one call,
none queued (`--max-concurrent 1 --max-queue 0`); beyond it a call is refused RESOURCE_EXHAUSTED and
nst-client waits for a free replica (--wait). Every run is its own nst-client process, chunked, on
the same images and options, so each PNG must equal, byte for byte, the same run made alone.

    nst-export --model-dir /tmp/load/nst --weights vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
    python benchmarks/load.py --model-dir /tmp/load/nst --servers 2 --runs 12 --steps 24 --chunk 4 --size 112

It prints the time for all runs against two ideals, and each run's wait for a free replica; it exits 1
if a run failed or its PNG differs from the lone run's. By replicas: every replica busy all along, runs x
one run's calls / replicas, plus one client's start-up. By cores: the replicas here share this machine's
cores, which a lone run already keeps busy, so no more than one run's worth of calls at a time: runs x
one run's calls, plus one start-up.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from roundtrip import cpu_model, photo_like, start_devserver

ADMISSION = ("--max-concurrent", "1", "--max-queue", "0")  # the stock server's, as deploy/ runs it
# nst-client's summary: "wrote OUT (WxH) in 12.3 s by version 1, 4.5 s of it waiting for a free replica; ..."
SUMMARY = re.compile(r" in (?P<run>[\d.]+) s.*?(?:, (?P<waited>[\d.]+) s of it waiting for a free replica)?; ")


def client_command(servers: list[str], content: pathlib.Path, style: pathlib.Path, output: pathlib.Path, args) -> list:
    return [
        pathlib.Path(sys.executable).parent / "nst-client",
        *("--server", ",".join(servers), "--chunk", str(args.chunk), "--steps", str(args.steps)),
        *("--max-dim", str(args.size), "--timeout", "600", "-o", str(output), str(content), str(style)),
    ]


def finished(process: subprocess.Popen, started: float) -> dict:
    """A client's outcome: exit code, wall time, and the run's own time and wait from its summary line."""
    _, err = process.communicate()
    wall = time.monotonic() - started
    match = SUMMARY.search(err)
    run_s = float(match["run"]) if match else None
    waited = float(match["waited"] or 0) if match else None
    return {"code": process.returncode, "wall_s": wall, "run_s": run_s, "waited_s": waited, "stderr": err[-500:]}


def measure(args: argparse.Namespace, folder: pathlib.Path) -> dict:
    content, style = folder / "content.jpg", folder / "style.jpg"
    content.write_bytes(photo_like(args.size * 3 // 4, args.size, 1))
    style.write_bytes(photo_like(args.size, args.size, 2))
    servers = [start_devserver(pathlib.Path(args.model_dir), *ADMISSION) for _ in range(args.servers)]
    addresses = [address for _, address in servers]
    try:
        # One run alone first: its PNG is what every run must give, its time the unit of work.
        started = time.monotonic()
        alone = finished(
            subprocess.Popen(
                client_command(addresses, content, style, folder / "alone.png", args), stderr=subprocess.PIPE, text=True
            ),
            started,
        )
        if alone["code"] != 0 or alone["run_s"] is None:
            raise SystemExit(f"the lone run failed: {alone['stderr']}")
        started = time.monotonic()
        outputs = [folder / f"run_{i}.png" for i in range(args.runs)]
        processes = [
            subprocess.Popen(client_command(addresses, content, style, out, args), stderr=subprocess.PIPE, text=True)
            for out in outputs
        ]
        runs = [finished(process, started) for process in processes]
        total = time.monotonic() - started
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait()
    reference = (folder / "alone.png").read_bytes()
    for run, output in zip(runs, outputs, strict=True):
        run["equal"] = output.exists() and output.read_bytes() == reference
    start_up = alone["wall_s"] - alone["run_s"]
    ideal = args.runs * alone["run_s"] / args.servers + start_up
    ideal_cores = args.runs * alone["run_s"] + start_up
    waits = [run["waited_s"] or 0 for run in runs]
    return {
        "cpu": cpu_model(),
        "servers": args.servers,
        "runs": args.runs,
        "steps": args.steps,
        "chunk": args.chunk,
        "size": args.size,
        "alone_run_s": alone["run_s"],
        "client_start_up_s": start_up,
        "total_s": total,
        "ideal_s": ideal,
        "ideal_cores_s": ideal_cores,
        "finished": sum(run["code"] == 0 for run in runs),
        "equal": sum(run["equal"] for run in runs),
        "longest_wait_s": max(waits),
        "mean_wait_s": sum(waits) / len(waits),
        "runs_detail": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="an exported model folder, e.g. models/nst")
    parser.add_argument("--servers", type=int, default=2, help="replicas (default 2)")
    parser.add_argument("--runs", type=int, default=12, help="client processes started at once (default 12)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--chunk", type=int, default=4, help="steps per call (default 4)")
    parser.add_argument("--size", type=int, default=112, help="max_dim of the runs (default 112)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nst-load-") as folder:
        figures = measure(args, pathlib.Path(folder))
    print(
        f"{figures['runs']} runs of {args.steps} steps in calls of {args.chunk} at {args.size} px on "
        f"{args.servers} replicas admitting one call each; CPU {figures['cpu']}"
    )
    print(f"one run alone: {figures['alone_run_s']:.1f} s of calls, {figures['client_start_up_s']:.1f} s start-up")
    print(
        f"all runs: {figures['total_s']:.1f} s; ideal by replicas {figures['ideal_s']:.1f} s "
        f"({figures['total_s'] / figures['ideal_s']:.2f}x), by this machine's cores {figures['ideal_cores_s']:.1f} s "
        f"({figures['total_s'] / figures['ideal_cores_s']:.2f}x)"
    )
    longest, mean = figures["longest_wait_s"], figures["mean_wait_s"]
    print(f"wait for a free replica: longest of a run {longest:.1f} s, mean {mean:.1f} s")
    print(f"finished {figures['finished']}/{args.runs}, PNG equal to the lone run's {figures['equal']}/{args.runs}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if figures["finished"] == figures["equal"] == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
