"""What cutting a run into calls costs: the same steps as one call and as calls of --chunk steps,
in process (nst_model.load, the server's loader) or through nst-client and nst-devserver (loopback
gRPC), with the bytes each call carries each way.

    nst-export --model-dir /tmp/bench/nst --weights vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
    python benchmarks/roundtrip.py --model-dir /tmp/bench/nst --where local --size 192
    python benchmarks/roundtrip.py --model-dir /tmp/bench/nst --where devserver --size 512

Both modes run the project's one chunk loop (nst_client.chunked). They alternate, after a warm-up
run of each; the overhead is the median over repeats of (chunked time / one-call time) - 1. Bytes
are the serialized gRPC messages (devserver) or the arrays fed and fetched (local), per call.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
import PIL.Image

from nst_client import NSTClient
from nst_client.grpc_client import CHANNEL_OPTIONS
from nst_model.runner import Stylizer, load


class WireCounter(grpc.UnaryUnaryClientInterceptor):
    """Records (signature, request bytes, response bytes) of each Predict call, serialized."""

    def __init__(self):
        self.calls: list[tuple[str, int, int]] = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        response = continuation(client_call_details, request)
        if client_call_details.method.endswith("/Predict"):
            self.calls.append((request.model_spec.signature_name, request.ByteSize(), response.result().ByteSize()))
        return response


def counting(stylizer: Stylizer, calls: list[tuple[str, int, int]]) -> Stylizer:
    """The stylizer with each call's input and output bytes (array sizes) recorded."""

    def size(values: Mapping[str, object]) -> int:
        def one(value: object) -> int:
            array = np.asarray(value)
            return sum(len(v) for v in array.ravel()) if array.dtype == object else array.nbytes

        return sum(len(v) if isinstance(v, bytes) else one(v) for v in values.values())

    def call(signature: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        out = stylizer.call(signature, inputs, outputs)
        calls.append((signature, size(inputs), size(out)))
        return out

    return Stylizer(call, stylizer.defaults)


def photo_like(height: int, width: int, seed: int) -> bytes:
    """A JPEG (quality 90) of smooth colour waves and noise: sizes like a photo's, no files needed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    waves = [np.sin(2 * np.pi * (f * x + g * y) + p) for f, g, p in rng.uniform(0.5, 6, (3, 3))]
    image = 0.5 + 0.3 * np.stack(waves, -1) + rng.normal(0, 0.05, (height, width, 3))
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.uint8(np.clip(image, 0, 1) * 255)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def start_devserver(model_dir: pathlib.Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """nst-devserver with `flags` on a free loopback port: (process, "127.0.0.1:PORT")."""
    process = subprocess.Popen(
        [pathlib.Path(sys.executable).parent / "nst-devserver", "--model-dir", str(model_dir), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    banner = process.stdout.readline()
    match = re.search(r" on (\S+):(\d+);", banner)
    if not match:
        process.kill()
        raise SystemExit(f"nst-devserver did not start: {banner!r}")
    return process, f"{match[1]}:{match[2]}"


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def cpu_model() -> str:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="an exported model folder, e.g. models/nst")
    parser.add_argument("--where", choices=("local", "devserver"), default="local")
    parser.add_argument("--size", type=int, default=192, help="max_dim of the run (default 192)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=5, help="steps per call of the chunked runs (default 5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    model_dir = pathlib.Path(args.model_dir)
    content, style = photo_like(args.size * 3 // 4, args.size, 1), photo_like(args.size, args.size, 2)
    options = {"steps": args.steps, "max_dim": args.size}
    wire: list[tuple[str, int, int]] = []
    process = None
    if args.where == "local":
        newest = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
        stylizer = load(model_dir / str(newest))

        def run(chunk: int, count: bool = False) -> bytes:
            runner = counting(stylizer, wire) if count else stylizer
            return runner.run(content, style, chunk=chunk, progress=False, **options).png
    else:
        process, address = start_devserver(model_dir)
        counter = WireCounter()
        counter.calls = wire
        client = NSTClient(address, timeout=None)
        channel = grpc.intercept_channel(grpc.insecure_channel(address, CHANNEL_OPTIONS), counter)
        counted = NSTClient(address, timeout=None, channel=channel)

        def run(chunk: int, count: bool = False) -> bytes:
            return (counted if count else client).run(content, style, chunk=chunk, **options).png

    try:
        assert run(0) == run(args.chunk), "a chunked run must give one call's bytes"
        one, chunked = [], []
        for _ in range(args.repeats):
            one.append(timed(lambda: run(0)))
            chunked.append(timed(lambda: run(args.chunk)))
        run(args.chunk, count=True)
    finally:
        if process is not None:
            process.terminate()
            process.wait()

    ratios = [c / o for c, o in zip(chunked, one, strict=True)]
    overhead = statistics.median(ratios) - 1
    print(f"{args.where}, {args.size} px, {args.steps} steps, {args.repeats} repeats, CPU {cpu_model()}")
    print(f"one call:           median {statistics.median(one):.2f} s  {[round(t, 2) for t in one]}")
    print(
        f"calls of {args.chunk:<3} steps: median {statistics.median(chunked):.2f} s  {[round(t, 2) for t in chunked]}"
    )
    print(f"overhead of the chunked run: {overhead:+.1%} (median of per-pair ratios; goal at most +5%)")
    print(f"bytes per call of the chunked run ({'serialized gRPC' if process else 'arrays fed and fetched'}):")
    for signature, sent, received in wire:
        print(f"    {signature:<16} in {sent:>12,} B   out {received:>12,} B")
    if args.json:
        figures = {
            "where": args.where,
            "size": args.size,
            "steps": args.steps,
            "chunk": args.chunk,
            "cpu": cpu_model(),
            "one_call_s": one,
            "chunked_s": chunked,
            "overhead": overhead,
            "calls": [{"signature": s, "in_bytes": i, "out_bytes": o} for s, i, o in wire],
        }
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
