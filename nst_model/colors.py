"""Colour control, after Gatys et al. (2016), "Preserving Color in Neural Artistic Style Transfer".

The request's `colors` option picks one of COLORS; each function here is one of their steps:
- swap (and the older `preserve_colors`): the result's luminance with the content's chroma;
- histogram: the style's colours moved to the content's colour mean and covariance before the run;
- luminance: content and style reduced to luminance (the style's matched to the content's mean and
  deviation), the run sees luminance only, and the content's chroma is put back at the end.
"""

from __future__ import annotations

import tensorflow as tf

from nst_model.options import COLORS

HISTOGRAM_EPSILON = 1e-5  # added to colour covariances: a flat-coloured style has a singular one


def keep_colors(image: tf.Tensor, content: tf.Tensor) -> tf.Tensor:
    """Y of `image` with U and V of `content` (YUV, as the reference implementations), clipped."""
    luma = tf.image.rgb_to_yuv(image)[..., :1]
    chroma = tf.image.rgb_to_yuv(content)[..., 1:]
    return tf.clip_by_value(tf.image.yuv_to_rgb(tf.concat([luma, chroma], -1)), 0.0, 1.0)


def grey(image: tf.Tensor) -> tf.Tensor:
    """The luminance Y of an RGB image, as three equal channels (what VGG takes)."""
    return tf.tile(tf.image.rgb_to_yuv(image)[..., :1], [1, 1, 1, 3])


def match_luminance(style: tf.Tensor, content: tf.Tensor) -> tf.Tensor:
    """The style's luminance, shifted and scaled to the content's mean and standard deviation."""
    s, c = grey(style), grey(content)
    scale = tf.math.reduce_std(c) / (tf.math.reduce_std(s) + 1e-6)
    return tf.clip_by_value((s - tf.reduce_mean(s)) * scale + tf.reduce_mean(c), 0.0, 1.0)


def _mean_and_covariance(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    pixels = tf.reshape(image, [-1, 3])
    mean = tf.reduce_mean(pixels, 0)
    centred = pixels - mean
    cov = tf.transpose(centred) @ centred / tf.cast(tf.shape(pixels)[0], tf.float32)
    return mean, cov + HISTOGRAM_EPSILON * tf.eye(3)


def _symmetric_power(matrix: tf.Tensor, power: float) -> tf.Tensor:
    values, vectors = tf.linalg.eigh(matrix)
    return vectors @ tf.linalg.diag(tf.pow(tf.maximum(values, HISTOGRAM_EPSILON), power)) @ tf.transpose(vectors)


def match_histogram(style: tf.Tensor, content: tf.Tensor) -> tf.Tensor:
    """The style recoloured by the affine map that gives its colours the content's mean and covariance:
    x -> C_c^1/2 C_s^-1/2 (x - m_s) + m_c, with symmetric square roots (Gatys et al.'s
    "image analogies" variant, which they found to look best)."""
    style_mean, style_cov = _mean_and_covariance(style)
    content_mean, content_cov = _mean_and_covariance(content)
    transform = _symmetric_power(content_cov, 0.5) @ _symmetric_power(style_cov, -0.5)
    recoloured = (tf.reshape(style, [-1, 3]) - style_mean) @ tf.transpose(transform) + content_mean
    return tf.clip_by_value(tf.reshape(recoloured, tf.shape(style)), 0.0, 1.0)


def for_vgg(image: tf.Tensor, mode: tf.Tensor) -> tf.Tensor:
    """What the network sees of the content or the optimised image: its luminance alone in
    luminance mode, else itself."""
    return tf.cond(tf.equal(mode, COLORS.index("luminance")), lambda: grey(image), lambda: image)


def prepare_style(style: tf.Tensor, content: tf.Tensor, mode: tf.Tensor) -> tf.Tensor:
    """The style as the targets are computed from it, for colour mode `mode` (an index into COLORS)."""
    prepared = {
        "histogram": lambda: match_histogram(style, content),
        "luminance": lambda: match_luminance(style, content),
    }
    return tf.switch_case(mode, [prepared.get(name, lambda: style) for name in COLORS])


def shown(image: tf.Tensor, content: tf.Tensor, mode: tf.Tensor) -> tf.Tensor:
    """The image the PNG shows: the content's colours put back in swap and luminance modes."""
    back = tf.equal(mode, COLORS.index("swap")) | tf.equal(mode, COLORS.index("luminance"))
    return tf.cond(back, lambda: keep_colors(image, content), lambda: image)
