"""Reading VGG19 weights: the Keras file layouts, and one-line errors for bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from helpers import random_weights, write_keras_h5

from nst_model import vgg


def test_reads_the_download_layout_up_to_the_last_layer_needed(weights_file):
    weights = vgg.read_weights(weights_file, "block5_conv2")
    assert list(weights) == list(vgg.conv_shapes("block5_conv2"))
    assert len(weights) == 14
    expected = random_weights()
    for name, (kernel, bias) in weights.items():
        np.testing.assert_array_equal(kernel, expected[name][0])
        np.testing.assert_array_equal(bias, expected[name][1])


def test_reads_the_layout_keras3_save_weights_writes(tmp_path):
    """Groups whose datasets are named 'layer/kernel', 'layer/bias' (as ../shared's copy is)."""
    expected = random_weights(seed=5)
    path = tmp_path / "keras3.h5"
    with h5py.File(path, "w") as f:
        for name, (kernel, bias) in expected.items():
            group = f.create_group(name)
            group.attrs["weight_names"] = [f"{name}/kernel", f"{name}/bias"]
            group[f"{name}/kernel"], group[f"{name}/bias"] = kernel, bias
    weights = vgg.read_weights(path, "block5_conv2")
    np.testing.assert_array_equal(weights["block4_conv3"][0], expected["block4_conv3"][0])


@pytest.mark.slow
def test_features_match_keras_vgg19(weights_file):
    """Our tf.nn network and Keras's VGG19 (same file) give the same activations."""
    import tensorflow as tf

    keras_vgg = tf.keras.applications.VGG19(include_top=False, weights=str(weights_file))
    layers = ("block1_conv1", "block3_conv2", "block5_conv2")
    keras_model = tf.keras.Model(keras_vgg.input, [keras_vgg.get_layer(n).output for n in layers])
    image = tf.random.stateless_uniform([1, 37, 50, 3], seed=[1, 2])
    expected = keras_model(tf.keras.applications.vgg19.preprocess_input(image * 255.0))
    ours = vgg.VGG19(vgg.read_weights(weights_file, "block5_conv2"))(image, layers)
    for name, value in zip(layers, expected, strict=True):
        np.testing.assert_allclose(ours[name].numpy(), value.numpy(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.write_text("not hdf5"), p)[1], "not a readable HDF5 file"),
        (lambda p: (p.write_bytes(_truncated(p)), p)[1], "not a readable HDF5 file|cannot be read"),
        (lambda p: _without(p, "block3_conv2"), "layer 'block3_conv2' has 0 weights"),
        (lambda p: _with_shape(p, "block2_conv1", (3, 3, 64, 64)), "has shapes .* VGG19 needs"),
    ],
    ids=["missing", "not-hdf5", "truncated", "missing-layer", "wrong-shape"],
)
def test_bad_files_get_one_line_errors_naming_the_file(tmp_path, make, message):
    path = make(tmp_path / "weights.h5")
    with pytest.raises(vgg.WeightsError, match=message) as error:
        vgg.read_weights(path, "block5_conv2")
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def _truncated(path):
    full = write_keras_h5(path.with_name("full.h5"), random_weights()).read_bytes()
    return full[: len(full) // 3]


def _without(path, layer):
    weights = random_weights()
    del weights[layer]
    return write_keras_h5(path, weights)


def _with_shape(path, layer, shape):
    weights = random_weights()
    weights[layer] = (np.zeros(shape, np.float32), np.zeros(shape[-1], np.float32))
    return write_keras_h5(path, weights)


def test_weights_come_from_the_flag_then_the_environment(monkeypatch, weights_file, tmp_path):
    monkeypatch.setenv(vgg.WEIGHTS_ENV, str(weights_file))
    assert vgg.resolve_weights_path(None) == weights_file
    assert vgg.resolve_weights_path(tmp_path / "x.h5") == tmp_path / "x.h5"


def test_without_flag_or_environment_keras_downloads(monkeypatch, weights_file):
    monkeypatch.delenv(vgg.WEIGHTS_ENV, raising=False)
    calls = []

    def fake_get_file(fname, origin, cache_subdir, file_hash):
        calls.append((fname, cache_subdir, file_hash))
        return str(weights_file)

    monkeypatch.setattr("keras.utils.get_file", fake_get_file)
    assert vgg.resolve_weights_path(None) == weights_file
    assert calls == [(vgg.KERAS_FILENAME, "models", vgg.KERAS_MD5)]


def test_failed_download_says_how_to_use_local_weights(monkeypatch):
    monkeypatch.delenv(vgg.WEIGHTS_ENV, raising=False)

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("keras.utils.get_file", offline)
    with pytest.raises(vgg.WeightsError, match=f"could not download .* set {vgg.WEIGHTS_ENV}"):
        vgg.resolve_weights_path(None)
