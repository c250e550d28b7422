"""Shared fixtures: random VGG19 weights in the Keras file layout, a small exported model, images.

Everything is made in code at small sizes; tests that need the real ImageNet weights use the
`real_weights` fixture, which skips when NST_VGG19_WEIGHTS is unset.
"""

from __future__ import annotations

import os
import pathlib

import h5py
import numpy as np
import pytest
import tensorflow as tf

from nst_model.session import ServingSession
from nst_model.vgg import LAYERS, WEIGHTS_ENV, conv_shapes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> pathlib.Path:
    return write_keras_h5(tmp_path_factory.mktemp("weights") / "vgg19_random.h5", random_weights())


@pytest.fixture(scope="session")
def exported(tmp_path_factory, weights_file) -> pathlib.Path:
    """Version 1 of a model exported by nst-export with random weights."""
    from nst_export.exporter import export

    return export(tmp_path_factory.mktemp("models") / "nst", weights=weights_file)


@pytest.fixture(scope="session")
def serving_all_losses(tmp_path_factory, weights_file) -> ServingSession:
    """A model exported with every style loss (nst-export --style-losses gram,w2,sliced), loaded the
    server's way."""
    from nst_export.exporter import export
    from nst_model.options import STYLE_LOSSES

    path = export(tmp_path_factory.mktemp("models") / "nst", weights=weights_file, style_losses=STYLE_LOSSES)
    session = ServingSession(path)
    yield session
    session.close()


@pytest.fixture(scope="session")
def serving(exported) -> ServingSession:
    """The exported model loaded the server's way (TF1 Session, signature tensor names)."""
    session = ServingSession(exported)
    yield session
    session.close()


@pytest.fixture(scope="session")
def real_weights() -> pathlib.Path:
    path = os.environ.get(WEIGHTS_ENV)
    if not path:
        pytest.skip(f"{WEIGHTS_ENV} is unset: no real VGG19 weights on this machine")
    return pathlib.Path(path)


@pytest.fixture
def content_png() -> bytes:
    return png_bytes(make_image(40, 56, seed=1))


@pytest.fixture
def style_png() -> bytes:
    return png_bytes(make_image(48, 48, seed=2))


# Tests that start nst-devserver, need the real weights, export a model of their own or trace the
# whole model in a fresh process take a minute or more each: `pytest -m "not slow"` leaves them out.
SLOW_FIXTURES = {"model_base", "devserver", "real_weights", "real"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
