"""Where a step's time goes, read from TensorFlow's own trace of the Session path the server runs.

For each size and optimiser: one `pixels` call of 0 steps and one of N steps from the same state
(that of a run after `--from-step` steps, its targets carried as a chunked run carries them),
each with a full trace (RunMetadata); the difference of the two, per op type and divided by N, is
what one step runs. Also the untraced seconds per step of each optimiser, side by side in one
process (the median of `--repeats`), and the fused op types that show whether Grappler and oneDNN
fused Conv2D, BiasAdd and Relu in the served graph. Figures compare only within one run.

    python benchmarks/trace.py --weights ../shared/weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 \
        --sizes 512 1024 --steps 5
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

# Op types by what they do in a step (the rest is "other": elementwise losses, the optimiser, control flow).
GROUPS = {
    "conv forward": ("Conv2D",),
    "conv backward to the image": ("Conv2DBackpropInput",),
    "relu backward": ("ReluGrad",),
    "pooling": ("MaxPool", "AvgPool"),
    "gram matmuls": ("Einsum", "MatMul"),
    "layout conversion": ("ToTf", "TfToMkl", "Transpose", "Reverse"),
}


def group_of(op: str) -> str:
    for group, parts in GROUPS.items():
        if any(p in op and not (p == "Conv2D" and "Backprop" in op) for p in parts):
            return group
    return "other"


def op_times(trace) -> tuple[collections.Counter, collections.Counter]:
    """Microseconds and count per op type of one traced run ("X = Op(...)" in each timeline label)."""
    micros, counts = collections.Counter(), collections.Counter()
    for device in trace.step_stats.dev_stats:
        for node in device.node_stats:
            label = node.timeline_label.split(" = ", 1)
            op = label[1].split("(", 1)[0] if len(label) == 2 else node.node_name
            micros[op] += node.op_end_rel_micros - node.op_start_rel_micros
            counts[op] += 1
    return micros, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an exported SavedModel version folder (default: export one)")
    parser.add_argument("--weights", help="VGG19 .h5 ($NST_VGG19_WEIGHTS), exported unless --model; photos beside it")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="of the export")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512], help="longest sides (512)")
    parser.add_argument("--steps", type=int, default=5, help="steps in the traced and timed calls (5)")
    parser.add_argument("--repeats", type=int, default=3, help="untraced timings per optimiser (3)")
    parser.add_argument("--from-step", type=int, default=25, help="steps run before those measured (25)")
    parser.add_argument("--optimizers", nargs="+", default=["lbfgs", "adam"], choices=("lbfgs", "adam"))
    parser.add_argument("--top", type=int, default=12, help="op types listed per run (12)")
    parser.add_argument("--json", default="benchmarks/results/trace-latest.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import numpy as np
    from midrun import machine_line, midrun_feeds, photos  # this folder's
    from tensorflow.core.protobuf import config_pb2

    from nst_export.exporter import export
    from nst_model.session import ServingSession

    weights, content, style = photos(parser, args.weights)
    model = args.model or export(pathlib.Path(tempfile.mkdtemp()) / "nst", weights=weights, precision=args.precision)
    session = ServingSession(model)
    results = {"machine": machine_line(), "model": str(model), "steps": args.steps, "runs": []}

    for size in args.sizes:
        for optimizer in args.optimizers:
            feeds, _, shape = midrun_feeds(session, content, style, size, optimizer, args.from_step)

            def call(steps: int, trace=None, feeds=feeds) -> tuple[float, list[int]]:
                started = time.perf_counter()
                out = session.run("pixels", {**feeds, "steps": np.int32(steps)}, ["loss", "evaluations"], trace=trace)
                return time.perf_counter() - started, out["evaluations"].tolist()

            seconds = [(call(args.steps)[0] - call(0)[0]) / args.steps for _ in range(args.repeats)]
            traces = [config_pb2.RunMetadata() for _ in range(2)]
            call(0, traces[0])
            _, evaluations = call(args.steps, traces[1])
            (base, base_n), (full, full_n) = op_times(traces[0]), op_times(traces[1])
            per_step = {op: (full[op] - base[op]) / args.steps / 1e3 for op in full}  # ms
            counts = {op: (full_n[op] - base_n[op]) / args.steps for op in full_n}
            run = {
                "size": size,
                "shape": list(shape),
                "optimizer": optimizer,
                "seconds_per_step": statistics.median(seconds),
                "repeats": seconds,
                "evaluations": evaluations,  # of each traced step: gradients it took
                "op_ms_per_step": dict(sorted(per_step.items(), key=lambda kv: -kv[1])),
                "ops_per_step": counts,
            }
            results["runs"].append(run)
            print_run(run, args.top)

    session.close()
    for size in args.sizes:
        by = {r["optimizer"]: r["seconds_per_step"] for r in results["runs"] if r["size"] == size}
        if {"lbfgs", "adam"} <= set(by):
            print(
                f"{size} px: an L-BFGS step takes {by['lbfgs'] / by['adam']:.3f} Adam steps' time (untraced, medians)"
            )
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def print_run(run: dict, top: int) -> None:
    ops = run["op_ms_per_step"]
    traced = sum(ops.values())
    height, width = run["shape"]
    print(
        f"\n{run['size']} px ({height}x{width}), {run['optimizer']}: {run['seconds_per_step']:.3f} s per step untraced "
        f"(median of {len(run['repeats'])}); traced ops {traced / 1e3:.3f} s per step (summed over threads); "
        f"gradients per traced step {run['evaluations']}"
    )
    groups = collections.Counter()
    for op, ms in ops.items():
        groups[group_of(op)] += ms
    for group, ms in groups.most_common():
        print(f"  {group:<28} {ms:9.1f} ms  {100 * ms / traced:5.1f}%")
    print(f"  top op types ({'ms/step':>9}, ops/step):")
    for op, ms in list(ops.items())[:top]:
        print(f"    {op:<34} {ms:9.1f}  {run['ops_per_step'].get(op, 0):6.1f}")
    fused = sorted(op for op in ops if "Fused" in op)
    print(f"  fused op types: {', '.join(fused) or 'none'}")


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    sys.exit(main())
