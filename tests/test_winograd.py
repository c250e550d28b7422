"""The Winograd convolutions of the benchmark (benchmarks/winograd.py) equal tf.nn.conv2d, values and
gradients w.r.t. the input, at odd and even sizes, so that its A/B times a faithful convolution."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
import tensorflow as tf

_PATH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "winograd.py"
_SPEC = importlib.util.spec_from_file_location("winograd", _PATH)
winograd = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(winograd)


def by_winograd(m: int):
    return lambda x, kernel: winograd.conv2d(x, m, *winograd.transforms(kernel, m))


def value_and_input_gradient(conv, x: tf.Tensor, kernel: tf.Tensor, upstream: tf.Tensor) -> tuple:
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.cast(conv(tf.cast(x, kernel.dtype), kernel), tf.float32)
        loss = tf.reduce_sum(y * upstream)
    return y.numpy(), tape.gradient(loss, x).numpy()


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape", [(1, 1, 2, 3), (5, 7, 3, 4), (13, 6, 9, 5), (8, 8, 16, 8)])
def test_winograd_equals_the_direct_convolution(m, shape):
    h, w, c, k = shape
    rng = np.random.default_rng(m * 100 + h)
    x = tf.constant(rng.normal(size=(2, h, w, c)), tf.float32)
    kernel = tf.constant(rng.normal(size=(3, 3, c, k)), tf.float32)
    upstream = tf.constant(rng.normal(size=(2, h, w, k)), tf.float32)
    want = value_and_input_gradient(lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"), x, kernel, upstream)
    got = value_and_input_gradient(by_winograd(m), x, kernel, upstream)
    for g, e in zip(got, want, strict=True):
        assert g.shape == e.shape
        assert np.abs(g - e).max() < 1e-5 * np.abs(e).max()  # F(4x4) rounds ~10x more than F(2x2)


def test_bfloat16_f2_stays_near_the_float32_convolution():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(1, 9, 11, 16)), tf.float32)
    kernel = tf.constant(rng.normal(size=(3, 3, 16, 8)), tf.float32)
    upstream = tf.constant(rng.normal(size=(1, 9, 11, 8)), tf.float32)
    want = value_and_input_gradient(lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"), x, kernel, upstream)
    got = value_and_input_gradient(by_winograd(2), x, tf.cast(kernel, tf.bfloat16), upstream)
    for g, e in zip(got, want, strict=True):
        assert np.abs(g - e).max() < 0.03 * np.abs(e).max()
