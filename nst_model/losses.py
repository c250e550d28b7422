"""The three terms of the objective, as pure functions of tensors."""

from __future__ import annotations

import tensorflow as tf


def gram(features: tf.Tensor) -> tf.Tensor:
    """Channel correlations of [N, H, W, C] features, divided by H*W as in the reference."""
    shape = tf.shape(features)
    return tf.einsum("bijc,bijd->bcd", features, features) / tf.cast(shape[1] * shape[2], tf.float32)


def style_loss(grams: list[tf.Tensor], targets: list[tf.Tensor]) -> tf.Tensor:
    """Mean over layers of the mean squared difference of Gram matrices."""
    return tf.add_n([tf.reduce_mean(tf.square(g - t)) for g, t in zip(grams, targets)]) / len(grams)


def content_loss(features: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.square(features - target))


def tv_loss(image: tf.Tensor) -> tf.Tensor:
    """Mean squared difference of horizontal neighbours plus that of vertical neighbours."""
    return tf.reduce_mean(tf.square(image[:, :, 1:] - image[:, :, :-1])) + tf.reduce_mean(
        tf.square(image[:, 1:] - image[:, :-1])
    )
