"""What trace.py and compare.py share: the photos beside the weights, the machine they run on, and
the feeds of a `pixels` call from mid-run, where most of a run's steps are."""

from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np
from benchmark import machine  # this folder's

from nst_client import chunked


def photos(parser: argparse.ArgumentParser, weights: str | None) -> tuple[str, bytes, bytes]:
    """(weights path, content JPEG, style JPEG): Tübingen and Starry Night from the images folder
    beside the weights (the shared folder's layout), as the benchmark's defaults."""
    weights = weights or os.environ.get("NST_VGG19_WEIGHTS")
    if not weights:
        parser.error("give --weights or set NST_VGG19_WEIGHTS (the photos come from the images folder beside it)")
    images = pathlib.Path(weights).resolve().parents[1] / "images"
    content, style = ((images / sub).read_bytes() for sub in ("content/tubingen.jpg", "style/starry_night.jpg"))
    return weights, content, style


def machine_line() -> dict:
    """The machine's description (benchmark.machine), printed in one line, for the results."""
    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores; CPU flags: {' '.join(info['isa']) or 'no AVX-512 or AMX'}")
    return info


def midrun_feeds(
    session, content: bytes, style: bytes, size: int, optimizer: str, from_step: int, extra: dict | None = None
) -> tuple[dict[str, np.ndarray], float, tuple[int, int]]:
    """(feeds, loss, (height, width)): a `pixels` call's feeds from the state after `from_step`
    steps (history filled), the targets carried as a chunked run carries them, under the
    reference's objective as the benchmark runs it, with the `extra` inputs (a mask); the call for
    that state is prepared before any clock."""
    decoded = {
        name: session.run("decode", {"image": np.array(data, object), "max_dim": np.int32(size)})["pixels"]
        for name, data in (("content", content), ("style", style))
    }
    feeds = {**decoded, **(extra or {}), "optimizer": np.array(optimizer.encode(), object)}
    feeds["style_balance"] = np.array(b"reference", object)
    ran = session.run("pixels", {**feeds, "steps": np.int32(from_step)})
    feeds = {k: v for k, v in feeds.items() if k != "style"}
    feeds.update({k: ran[k] for k in (*chunked.state_names(optimizer), *chunked.TARGETS)})
    session.run("pixels", {**feeds, "steps": np.int32(1)}, ["loss", "evaluations"])
    return feeds, float(ran["loss"]), tuple(decoded["content"].shape[1:3])
