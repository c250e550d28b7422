"""Adam as a pure function of tensors, so its state can ride in the while-loop carry.

Keras's optimizers keep their moments in variables, which concurrent requests on one server
Session would share; this is the same update as `tf.keras.optimizers.Adam` (Keras 3).
"""

from __future__ import annotations

import tensorflow as tf

from nst_model.options import ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON


def adam_step(
    x: tf.Tensor, grad: tf.Tensor, m: tf.Tensor, v: tf.Tensor, step: tf.Tensor, learning_rate: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """One Adam update of `x`; `step` counts the updates already made. Returns (x, m, v, step)."""
    step = step + 1
    t = tf.cast(step, tf.float32)
    alpha = learning_rate * tf.sqrt(1.0 - tf.pow(ADAM_BETA_2, t)) / (1.0 - tf.pow(ADAM_BETA_1, t))
    m = m + (grad - m) * (1.0 - ADAM_BETA_1)
    v = v + (tf.square(grad) - v) * (1.0 - ADAM_BETA_2)
    # Keras adds epsilon to sqrt(v) outside the bias correction, which is folded into alpha.
    return x - (m * alpha) / (tf.sqrt(v) + ADAM_EPSILON), m, v, step
