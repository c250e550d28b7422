"""What the serving path costs: nst-client -> nst-devserver over loopback gRPC, against the same
serving_default call run in-process through the server's loader (ServingSession).

    nst-export --model-dir /tmp/bench/nst --weights vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
    python benchmarks/roundtrip.py --model-dir /tmp/bench/nst --size 256 --steps 20 --repeats 5

The two paths alternate, after one warm-up call each; the ratio reported is the median of the
per-pair ratios. The fixed cost of a call is measured apart, on a 16 px `decode`. Bytes on the
wire are the serialized requests and responses, per call.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

import grpc
import numpy as np
import PIL.Image

from nst_client import NSTClient
from nst_client.grpc_client import CHANNEL_OPTIONS
from nst_model.session import ServingSession


class WireCounter(grpc.UnaryUnaryClientInterceptor):
    """Records (method, signature, request bytes, response bytes) of each call, serialized."""

    def __init__(self):
        self.calls: list[tuple[str, str, int, int]] = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        response = continuation(client_call_details, request)
        method = client_call_details.method.rsplit("/", 1)[-1]
        signature = request.model_spec.signature_name if method == "Predict" else ""
        self.calls.append((method, signature, request.ByteSize(), response.result().ByteSize()))
        return response


def photo_like(height: int, width: int, seed: int) -> bytes:
    """A JPEG (quality 90) of smooth colour waves and noise: sizes like a photo's, no files needed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    waves = [np.sin(2 * np.pi * (f * x + g * y) + p) for f, g, p in rng.uniform(0.5, 6, (3, 3))]
    image = 0.5 + 0.3 * np.stack(waves, -1) + rng.normal(0, 0.05, (height, width, 3))
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.uint8(np.clip(image, 0, 1) * 255)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def start_devserver(model_dir: pathlib.Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        [pathlib.Path(sys.executable).parent / "nst-devserver", "--model-dir", str(model_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    banner = process.stdout.readline()
    match = re.search(r" on (\S+):(\d+);", banner)
    if not match:
        process.kill()
        raise SystemExit(f"nst-devserver did not start: {banner!r}")
    return process, f"{match[1]}:{match[2]}"


def chunked_in_process(
    session: ServingSession, content: bytes, style: bytes, steps: int, size: int, chunk: int
) -> bytes:
    """The client's chunked run (decode, then pixels calls handing the state on), without a network."""

    def decode(image: bytes) -> np.ndarray:
        return session.run("decode", {"image": np.array(image, object), "max_dim": np.int32(size)})["pixels"]

    feeds = {"content": decode(content), "style": decode(style)}
    pixels = session.signature("pixels")
    state_names = set(pixels.outputs) & set(pixels.inputs)  # the resumable state, as the client derives it
    state, done = {}, 0
    while True:
        todo = min(chunk, steps - done)
        out = session.run("pixels", {**feeds, **state, "steps": np.int32(todo)})
        done += todo
        if done >= steps:
            return out["image_bytes"]
        state = {k: out[k] for k in state_names}


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="an exported model folder, e.g. models/nst")
    parser.add_argument("--size", type=int, default=256, help="max_dim of the run (default 256)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=5, help="steps per call for the chunked runs (default 5)")
    args = parser.parse_args()

    model_dir = pathlib.Path(args.model_dir)
    newest = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    content, style = photo_like(args.size * 3 // 4, args.size, 1), photo_like(args.size, args.size, 2)
    options = {"steps": args.steps, "max_dim": args.size}
    feeds = {
        "content": np.array(content, object),
        "style": np.array(style, object),
        "steps": np.int32(args.steps),
        "max_dim": np.int32(args.size),
    }

    session = ServingSession(model_dir / str(newest))
    process, address = start_devserver(model_dir)
    counter = WireCounter()
    counted = grpc.intercept_channel(grpc.insecure_channel(address, options=CHANNEL_OPTIONS), counter)
    try:
        with NSTClient(address, timeout=None) as client, NSTClient(address, channel=counted, timeout=None) as sizes:
            reference = session.run("serving_default", feeds)["image_bytes"]
            assert client.run(content, style, chunk=0, **options).png == reference
            assert client.run(content, style, chunk=args.chunk, **options).png == reference
            assert chunked_in_process(session, content, style, args.steps, args.size, args.chunk) == reference
            local, local_chunked, single, chunked = [], [], [], []
            for _ in range(args.repeats):
                local.append(timed(lambda: session.run("serving_default", feeds)))
                local_chunked.append(
                    timed(lambda: chunked_in_process(session, content, style, args.steps, args.size, args.chunk))
                )
                single.append(timed(lambda: client.run(content, style, chunk=0, **options)))
                chunked.append(timed(lambda: client.run(content, style, chunk=args.chunk, **options)))
            # The fixed cost of a call: a 16 px `decode`, whose compute is next to nothing.
            tiny = photo_like(16, 16, 3)
            tiny_feeds = {"image": np.array(tiny, object), "max_dim": np.int32(16)}
            tiny_request = {"image": tiny, "max_dim": np.int32(16)}
            call_local = [timed(lambda: session.run("decode", tiny_feeds)) for _ in range(50)]
            call_remote = [timed(lambda: client.predict("decode", tiny_request)) for _ in range(50)]
            wire = {}
            for chunk in (0, args.chunk):
                counter.calls.clear()
                sizes.run(content, style, chunk=chunk, **options)
                wire[chunk] = list(counter.calls)
    finally:
        process.terminate()
        process.wait()
        session.close()

    print(
        f"{args.size} px, {args.steps} steps, {args.repeats} repeats; JPEG inputs {len(content):,} + {len(style):,} B"
    )
    print(
        f"one tiny call (16 px decode, median of 50): in-process {statistics.median(call_local) * 1e3:.2f} ms, "
        f"through nst-client and nst-devserver {statistics.median(call_remote) * 1e3:.2f} ms"
    )
    print(f"in-process serving_default (ServingSession)  median {statistics.median(local):.3f} s")
    ratios = [t / base for t, base in zip(local_chunked, local, strict=True)]
    print(
        f"in-process, the chunked calls (--chunk {args.chunk:<3}) median {statistics.median(local_chunked):.3f} s; "
        f"ratio to one call: median {statistics.median(ratios):.3f}"
    )
    for chunk, times in ((0, single), (args.chunk, chunked)):
        ratios = [t / base for t, base in zip(times, local, strict=True)]
        print(
            f"nst-client -> nst-devserver, --chunk {chunk:<3}   median {statistics.median(times):.3f} s; "
            f"ratio to in-process: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}"
        )
        for method, signature, sent, received in wire[chunk]:
            print(f"    {method} {signature:<16} request {sent:>10,} B   response {received:>10,} B")
        total = sum(sent + received for *_, sent, received in wire[chunk])
        print(f"    total {total:,} B in {len(wire[chunk])} calls")


if __name__ == "__main__":
    main()
