"""Helpers shared by the serving tests (fixtures live in serving_fixtures.py)."""

from __future__ import annotations

import os
import pathlib
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from nst_model.session import ServingSession

SERVED_VERSIONS = (1, 3)  # two versions, so that "newest by default" and "the one asked for" differ


# `python -c RECORDING_DEVSERVER CALLS_DIR ARGS...` runs nst-devserver ARGS with each Predict call appending
# "start" as it begins and "end" as it returns its answer (gRPC sends it after) to CALLS_DIR/<pid>: which server
# is running a call right now, and how many calls each got, without timing anything. TensorFlow loads before
# nst-devserver can quieten it, so its start-up lines are silenced here.
RECORDING_DEVSERVER = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from nst_devserver import server, serving
calls = os.open(os.path.join(sys.argv.pop(1), str(os.getpid())), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
predict = serving.PredictionServicer.Predict
def recorded(self, request, context):
    os.write(calls, b"start\\n")
    try:
        return predict(self, request, context)
    finally:
        os.write(calls, b"end\\n")
serving.PredictionServicer.Predict = recorded
sys.exit(server.main(sys.argv[1:]))
"""


def recorded_calls(calls_dir: pathlib.Path, pid: int) -> tuple[int, int]:
    """(calls started, calls answered) by the RECORDING_DEVSERVER process `pid`."""
    path = calls_dir / str(pid)
    lines = path.read_text().split() if path.exists() else []
    return lines.count("start"), lines.count("end")


def wait_for(condition, timeout_s: float = 10.0) -> None:
    """Poll `condition` until it holds; fail after `timeout_s` (for states another thread reaches)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def script(name: str) -> pathlib.Path:
    """A console script installed next to this interpreter (pip install -e . puts them there)."""
    path = pathlib.Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the project with `pip install -e .`")
    return path


def quiet_env() -> dict[str, str]:
    """The environment for the console scripts, without TF_CPP_MIN_LOG_LEVEL (which conftest sets here):
    nst-devserver and nst-client quieten TensorFlow themselves, and the tests check that they do."""
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def serving_default(serving: ServingSession, content: bytes, style: bytes | list[bytes], **options: object) -> bytes:
    """The in-process result: the PNG serving_default returns through the server's loader.

    Options are converted to the signature's dtypes here, independently of the client; inputs
    not given take the signature's defaults, fed as the server feeds them (so the Session
    reuses one prepared graph for these calls and the server's).
    """
    signature = serving.signature("serving_default")
    feeds = {name: tf.make_ndarray(value) for name, value in signature.defaults.items()}
    feeds.update(content=np.array(content, object), style=np.array(style, object))
    for name, value in options.items():
        dtype = tf.dtypes.as_dtype(signature.inputs[name].dtype)
        feeds[name] = np.array(
            value.encode() if isinstance(value, str) else value, object if dtype == tf.string else dtype.as_numpy_dtype
        )
    return serving.run("serving_default", feeds)["image_bytes"]
