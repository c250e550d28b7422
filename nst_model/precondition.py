"""L-BFGS's preconditioner for an image: larger steps for lower spatial frequencies.

L-BFGS grows its inverse-Hessian estimate from a first guess; the usual one, a scalar (s.y / y.y),
moves every spatial frequency at the pace the stiffest allows. The style-transfer objective is stiff
at high frequencies (total variation is) and slow to converge in the broad ones (the gap that remains
is block4_conv1's style term against the content). So the first guess here scales each colour
channel's frequency f (cycles per pixel) by 1 / max(f, 1 / longest side): Lucid's frequency-scaled
image parameterisation, at half its decay, applied as a metric, the projection onto [0, 1]
unchanged. L-BFGS still sets the overall scale from the newest pair (s.y / y.My). Measured against
the scalar guess, other powers and a colour metric: docs/benchmarks.md, "A preconditioned L-BFGS
(lever 2)".
"""

from __future__ import annotations

import tensorflow as tf

POWER = 1.0  # the frequency scaling's exponent: 0 is the scalar guess; 2 (Lucid's) is too strong


def frequency_scale(height: tf.Tensor, width: tf.Tensor, power: float = POWER) -> tf.Tensor:
    """[height, width // 2 + 1]: max(f, 1 / longest side)^-power at each frequency of rfft2d."""
    fy = tf.cast((tf.range(height) + height // 2) % height - height // 2, tf.float32) / tf.cast(height, tf.float32)
    fx = tf.cast(tf.range(width // 2 + 1), tf.float32) / tf.cast(width, tf.float32)
    f = tf.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return tf.maximum(f, 1.0 / tf.cast(tf.maximum(height, width), tf.float32)) ** -power


def spectral(v: tf.Tensor, power: float = POWER) -> tf.Tensor:
    """M v for image-shaped v [1, H, W, 3]: each channel filtered by `frequency_scale` (symmetric and
    positive definite, so -M g descends wherever -g does)."""
    height, width = tf.shape(v)[1], tf.shape(v)[2]
    spectrum = tf.signal.rfft2d(tf.transpose(v[0], [2, 0, 1]))
    scale = tf.cast(frequency_scale(height, width, power), tf.complex64)
    filtered = tf.signal.irfft2d(spectrum * scale, fft_length=tf.stack([height, width]))
    return tf.transpose(filtered, [1, 2, 0])[None]
