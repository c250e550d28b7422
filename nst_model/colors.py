"""Original colours: the stylised image's luminance with the content's chroma."""

from __future__ import annotations

import tensorflow as tf


def keep_colors(image: tf.Tensor, content: tf.Tensor) -> tf.Tensor:
    """Y of `image` with U and V of `content` (YUV, as the reference implementations), clipped.

    Gatys et al. (2016, "Preserving color in neural artistic style transfer") call this
    colour-preserving post-processing; the optimisation itself is unchanged.
    """
    luma = tf.image.rgb_to_yuv(image)[..., :1]
    chroma = tf.image.rgb_to_yuv(content)[..., 1:]
    return tf.clip_by_value(tf.image.yuv_to_rgb(tf.concat([luma, chroma], -1)), 0.0, 1.0)
