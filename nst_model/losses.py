"""The terms of the objective, as pure functions of tensors."""

from __future__ import annotations

import tensorflow as tf


def gram(features: tf.Tensor) -> tf.Tensor:
    """Channel correlations of [N, H, W, C] features, divided by H*W as in the reference."""
    shape = tf.shape(features)
    return tf.einsum("bijc,bijd->bcd", features, features) / tf.cast(shape[1] * shape[2], tf.float32)


# Each loss applies its weight in the reference's order of operations, so that rounding, and with
# it the optimisation's path, matches the reference's.


def style_loss(
    grams: list[tf.Tensor],
    targets: list[tf.Tensor],
    weight: tf.Tensor,
    layer_weights: tf.Tensor,
    layer_scales: list[tf.Tensor],
) -> tf.Tensor:
    """Weighted mean over layers of the mean squared difference of Gram matrices, times `weight`.

    `layer_scales` multiply each layer's term (1 in the reference balance: x * 1.0 is x).
    `layer_weights` sum to 1. They are scaled by the layer count and the sum divided by it again,
    so that equal weights (0.2 * 5 == 1 exactly in float32) round as the reference's plain mean.
    """
    count = len(grams)
    per_layer = [
        tf.reduce_mean(tf.square(g - t)) * s * (layer_weights[i] * count)
        for i, (g, t, s) in enumerate(zip(grams, targets, layer_scales, strict=True))
    ]
    return tf.add_n(per_layer) * weight / count


def content_loss(features: tf.Tensor, target: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.square(features - target)) * weight


def tv_loss(image: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    """Mean squared difference of horizontal plus that of vertical neighbours, times `weight`."""
    return weight * (
        tf.reduce_mean(tf.square(image[:, :, 1:] - image[:, :, :-1]))
        + tf.reduce_mean(tf.square(image[:, 1:] - image[:, :-1]))
    )
