"""Helpers the tests share, in one place: test images and random VGG19 weights made in code, the
serving tests' processes and calls, the controls' feeds, certificates, and Dockerfile.serving parsed.

Fixtures live in conftest.py (every module) and serving_fixtures.py (the serving tests' plugin).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import tomllib

import h5py
import numpy as np
import pytest
import tensorflow as tf

from nst_model.options import BY_NAME
from nst_model.session import ServingSession
from nst_model.vgg import LAYERS, conv_shapes

ROOT = pathlib.Path(__file__).resolve().parent.parent

# ---- images and weights made in code -------------------------------------------------------------


def random_weights(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """He-initialised VGG19 weights: activations keep their scale through all 16 layers."""
    rng = np.random.default_rng(seed)
    return {
        name: (
            rng.normal(0.0, np.sqrt(2.0 / (9 * shape[2])), shape).astype(np.float32),
            rng.normal(0.0, 0.01, shape[-1]).astype(np.float32),
        )
        for name, shape in conv_shapes().items()
    }


def write_keras_h5(path: pathlib.Path, weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> pathlib.Path:
    """Write weights in the layout of Keras's VGG19 download (legacy HDF5, one group per layer)."""
    layer_names = ["input_layer"]
    block_pools = []
    for name in LAYERS:
        if name == "pool":
            block_pools.append(f"block{len(block_pools) + 1}_pool")
            layer_names.append(block_pools[-1])
        else:
            layer_names.append(name)
    layer_names.append("block5_pool")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layer_names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in layer_names:
            group = f.create_group(layer)
            if layer in weights:
                kernel_name, bias_name = f"{layer}_W_1:0", f"{layer}_b_1:0"  # the download's own naming
                group.attrs["weight_names"] = np.array([kernel_name.encode(), bias_name.encode()])
                group[kernel_name], group[bias_name] = weights[layer]
            else:
                group.attrs["weight_names"] = np.array([], dtype="S1")
    return path


def make_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with some edges, float32 [H, W, 3] in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(2 * np.pi * (f * x + g * y) + p) for f, g, p in rng.uniform(0.5, 3, (3, 3))]
    image = 0.5 + 0.35 * np.stack(channels, -1)
    image[height // 3 : height // 2, width // 4 : width // 2] = rng.uniform(0, 1, 3)
    return np.clip(image, 0, 1).astype(np.float32)


def png_bytes(image: np.ndarray) -> bytes:
    return tf.io.encode_png(tf.image.convert_image_dtype(image, tf.uint8, saturate=True)).numpy()


# ---- the serving tests ---------------------------------------------------------------------------

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


# ---- the controls: images and feeds as a client sends them -----------------------------------------

CONTENT = png_bytes(make_image(40, 56, seed=1))
STYLE_A = png_bytes(make_image(48, 48, seed=2))
STYLE_B = png_bytes(make_image(36, 60, seed=3))
BASE = {"steps": 4, "max_dim": 40}


def feed(name: str, value: object) -> np.ndarray:
    """A value as a client sends it for the input `name`."""
    if name in ("content", "style", "mask"):
        return np.array(value, object)
    if name in BY_NAME:
        dtype = BY_NAME[name].dtype
        return np.array(value, object if dtype == "string" else dtype)
    return np.asarray(value)


def stylize(serving: ServingSession, style: bytes | list[bytes] = STYLE_A, **options) -> dict:
    inputs = {"content": CONTENT, "style": style, **BASE, **options}
    return serving.run("serving_default", {k: feed(k, v) for k, v in inputs.items()})


def decode(serving: ServingSession, png: bytes, max_dim: int = BASE["max_dim"]) -> np.ndarray:
    return serving.run("decode", {"image": np.array(png, object), "max_dim": np.int32(max_dim)})["pixels"]


def rgb(png: bytes) -> np.ndarray:
    return tf.image.convert_image_dtype(tf.image.decode_png(png), tf.float32).numpy()


def yuv(png: bytes) -> np.ndarray:
    return tf.image.rgb_to_yuv(rgb(png)).numpy()


# ---- TLS -----------------------------------------------------------------------------------------

OPENSSL = shutil.which("openssl")


def make_certificate(folder: pathlib.Path, name: str, host: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed certificate for `host` (and 127.0.0.1) and its key, as PEM files."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={host}",
            "-addext",
            f"subjectAltName=DNS:{host},IP:127.0.0.1",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


# ---- Dockerfile.serving, parsed ------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile.serving"
ENTRYPOINT_FLAGS = {"--port", "--rest_api_port", "--model_name", "--model_base_path"}  # set by the image's script


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, line continuations joined."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            result.append((keyword.upper(), arguments.strip()))
    return result


def arguments(keyword: str) -> list[str]:
    return [args for key, args in instructions() if key == keyword]


def env() -> dict[str, str]:
    variables = {}
    for args in arguments("ENV"):
        variables.update(pair.split("=", 1) for pair in args.split())
    return variables


def pins() -> dict[str, str]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.replace(" ", "").split("==") for d in dependencies if "==" in d)
