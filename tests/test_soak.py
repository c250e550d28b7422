"""Soak: a burst of good and bad requests from several threads against one nst-devserver process.

Every good result must equal, byte for byte, the same request's result when sent alone; every
bad one must get INVALID_ARGUMENT; nothing may be refused (the queue has room for every thread);
the server must serve afterwards; and its resident memory after the burst must stay within
RSS_MARGIN of the baseline taken after a warm-up burst (which holds TensorFlow's own
allocations and the prepared graphs). `pytest -s` shows the figures.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import pathlib
import random
import re
import time

import numpy as np
import pytest
from helpers import make_image, png_bytes
from serving_fixtures import running_devserver

from nst_client import NSTClient, ServerError

THREADS = 6
MAX_CONCURRENT = 2
WARMUP_REQUESTS = 40
BURST_REQUESTS = 100
GOOD_SHARE = 0.7
RSS_MARGIN = 0.25  # after the burst, at most 25% above the warmed-up baseline
SMALL = {"max_dim": 32}  # tiny runs: 32 px, 2 steps


@dataclasses.dataclass(frozen=True)
class Good:
    content: bytes
    style: bytes
    chunk: int  # 0: one serving_default call; 1: decode, decode, then pixels per step

    def send(self, client: NSTClient) -> bytes:
        return client.run(self.content, self.style, steps=2, chunk=self.chunk, **SMALL).png


@dataclasses.dataclass
class Bad:
    signature: str
    inputs: dict

    def send(self, client: NSTClient) -> bytes:
        client.predict(self.signature, self.inputs)
        return b""


def good_requests() -> list[Good]:
    """Eight different runs, half of them chunked (state passed back and forth)."""
    return [
        Good(png_bytes(make_image(36 + 4 * i, 48, seed=i)), png_bytes(make_image(40, 40, seed=50 + i)), chunk=i % 2)
        for i in range(8)
    ]


def bad_requests(content: bytes, style: bytes) -> list[Bad]:
    """Hostile and broken input, each of which the model or the server answers with INVALID_ARGUMENT."""
    run = {"content": content, "style": style, "steps": np.int32(1), "max_dim": np.int32(32)}
    pixels = np.full([1, 32, 32, 3], 0.5, np.float32)
    return [
        Bad("serving_default", {**run, "steps": np.int32(-1)}),
        Bad("serving_default", {**run, "max_dim": np.int32(8)}),
        Bad("serving_default", {**run, "content": content[:60]}),  # truncated PNG
        Bad("serving_default", {**run, "style": b"not an image"}),
        Bad("serving_default", {**run, "steps": np.int64(1)}),  # the server converts no dtype
        Bad("serving_default", {**run, "style_weight": np.float32(np.nan)}),
        Bad("pixels", {"content": pixels[0], "style": pixels, "steps": np.int32(1)}),  # rank 3, not 4
        Bad("serving_default", {"style": style}),  # a required input missing
    ]


def rss_mib(pid: int) -> float:
    """A process's resident memory, in MiB (Linux)."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)[1]) / 1024


@pytest.fixture(scope="module")
def soak_server(exported, tmp_path_factory):
    base = tmp_path_factory.mktemp("soak") / "nst"
    base.mkdir()
    (base / "1").symlink_to(exported, target_is_directory=True)
    flags = ("--max-concurrent", str(MAX_CONCURRENT), "--max-queue", str(THREADS))
    with running_devserver(base, base.parent / "stderr.log", *flags) as server:
        yield server


def test_burst_of_good_and_bad_requests(soak_server):
    goods = good_requests()
    bads = bad_requests(goods[0].content, goods[0].style)
    process = soak_server["process"]
    with NSTClient(soak_server["address"], timeout=300, wait=0) as client:  # waiting would hide refusals
        references = {request: request.send(client) for request in goods}  # one at a time
        assert len(set(references.values())) == len(goods)

        def outcome(request: Good | Bad) -> str:
            try:
                result = request.send(client)
            except ServerError as e:
                return f"{type(request).__name__.lower()} {e.code.name}"
            if isinstance(request, Bad):
                return "bad accepted"
            return "good equal" if result == references[request] else "good DIFFERENT"

        def burst(count: int, seed: int) -> collections.Counter:
            rng = random.Random(seed)
            good_count = round(count * GOOD_SHARE)
            requests = [rng.choice(goods) for _ in range(good_count)] + [
                rng.choice(bads) for _ in range(count - good_count)
            ]
            rng.shuffle(requests)
            with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
                return collections.Counter(pool.map(outcome, requests))

        expected_warmup = {"good equal": round(WARMUP_REQUESTS * GOOD_SHARE)}
        expected_warmup["bad INVALID_ARGUMENT"] = WARMUP_REQUESTS - expected_warmup["good equal"]
        assert burst(WARMUP_REQUESTS, seed=1) == expected_warmup
        rss_before = rss_mib(process.pid)
        started = time.monotonic()
        outcomes = burst(BURST_REQUESTS, seed=2)
        elapsed = time.monotonic() - started
        rss_after = rss_mib(process.pid)
        print(
            f"\nsoak: {BURST_REQUESTS} requests from {THREADS} threads ({MAX_CONCURRENT} run at once) in "
            f"{elapsed:.1f} s: {dict(outcomes)}; server RSS {rss_before:.0f} MiB after a {WARMUP_REQUESTS}-request "
            f"warm-up, {rss_after:.0f} MiB after the burst ({100 * (rss_after / rss_before - 1):+.1f}%, "
            f"margin {100 * RSS_MARGIN:.0f}%)"
        )
        good_count = round(BURST_REQUESTS * GOOD_SHARE)
        assert outcomes == {"good equal": good_count, "bad INVALID_ARGUMENT": BURST_REQUESTS - good_count}
        assert process.poll() is None
        assert goods[1].send(client) == references[goods[1]]  # still serving, and right
    assert rss_after <= rss_before * (1 + RSS_MARGIN)
