"""Region masks for spatial control (Gatys et al., "Controlling Perceptual Factors in Neural Style
Transfer", CVPR 2017): which style paints which part of the photo.

A mask is an image whose distinct colours are its regions, ordered by colour value (red, then
green, then blue: for greys, darkest first). Each region gets a guidance channel at the content's
size, pooled down to each style layer as VGG pools its features, so that borders blend over a
layer's receptive field; `losses.guided_gram` weighs the features by it. Everything here is
checked before any VGG pass runs: the region count, the mask's aspect ratio, `mask_styles`.
"""

from __future__ import annotations

import tensorflow as tf

from nst_model import decoders, inputs
from nst_model.options import KEEP_PHOTO, MASK_ASPECT_TOLERANCE, MAX_REGIONS, STYLE_LAYERS
from nst_model.vgg import pools_before


def given(mask: tf.Tensor) -> tf.Tensor:
    """Whether the request sends a mask: the input's default is the empty string."""
    return tf.strings.length(inputs.scalar(mask, "mask")) > 0


def regions(mask: tf.Tensor, content: tf.Tensor) -> tf.Tensor:
    """The mask's regions at the content's size, one-hot [1, H, W, R] (float32).

    The regions are counted at the mask's own size, so a region too small to survive the resize
    to a coarse scale keeps its place in the order (its guidance is then empty).
    """
    pixels = decoders.decode(mask, "mask")
    sides, content_sides = tf.shape(pixels, tf.int64)[1:3], tf.shape(content, tf.int64)[1:3]
    cross = tf.abs(sides[0] * content_sides[1] - sides[1] * content_sides[0])
    pixels = inputs.require(
        pixels,
        tf.cast(cross, tf.float64) <= MASK_ASPECT_TOLERANCE * tf.cast(content_sides[0] * sides[1], tf.float64),
        "mask must have the aspect ratio of the content (height / width); got the mask, then the content height, width",
        sides,
        content_sides,
    )
    levels = tf.cast(tf.round(pixels[0] * 255.0), tf.int32)
    keys = levels[..., 0] * 65536 + levels[..., 1] * 256 + levels[..., 2]
    colours, index = tf.unique(tf.reshape(keys, [-1]))
    count = tf.size(colours)
    colours = inputs.require(
        colours,
        count <= MAX_REGIONS,
        f"mask has more than {MAX_REGIONS} regions (distinct colours); got",
        count,
        "(paint each region in one flat colour, and save the mask as PNG: JPEG adds colours at the edges)",
    )
    # Each colour's place in value order, by comparing the few colours: no sort op (TopKV2) in the graph,
    # which only an export holding the sliced loss needs.
    ranks = tf.reduce_sum(tf.cast(colours[tf.newaxis, :] < colours[:, tf.newaxis], tf.int32), axis=1)
    labels = tf.gather(ranks, index)
    labels = tf.image.resize(
        tf.reshape(tf.cast(labels, tf.float32), [1, *tf.unstack(tf.shape(keys)), 1]),
        tf.shape(content)[1:3],
        method="nearest",
    )
    return tf.one_hot(tf.cast(labels[..., 0], tf.int32), count)


def region_styles(mask_styles: tf.Tensor, count: tf.Tensor, num_styles: tf.Tensor) -> tf.Tensor:
    """The style of each of `count` regions: `mask_styles`, or region i -> style i when it is empty.

    `num_styles` is 0 where the request carries no styles (a resumed call, whose targets were made
    for these styles by the call that computed them).
    """
    shape = inputs.runtime_shape(mask_styles)
    sent = inputs.runtime_size(mask_styles) > 0
    mask_styles = inputs.require(
        mask_styles,
        tf.logical_not(sent) | (tf.equal(tf.size(shape), 1) & tf.equal(inputs.runtime_size(mask_styles), count)),
        f"mask_styles must give one style index per mask region ({KEEP_PHOTO}: keep the photo); got shape, regions",
        shape,
        count,
    )
    chosen = tf.cond(sent, lambda: tf.reshape(mask_styles, [-1]), lambda: tf.range(count))
    ok = tf.reduce_all(chosen >= KEEP_PHOTO) & (tf.equal(num_styles, 0) | tf.reduce_all(chosen < num_styles))
    return inputs.require(
        chosen,
        ok,
        f"mask_styles must be {KEEP_PHOTO} (keep the photo) or the index of a style, one per mask region "
        "(none: region i takes style i); got mask_styles, styles",
        chosen,
        num_styles,
    )


def layer_guides(one_hot: tf.Tensor, chosen: tf.Tensor) -> list[tf.Tensor]:
    """The guidance of each styled region (those not kept as the photo) at each style layer:
    [S, h, w, 1] per layer, average-pooled as VGG pools its features."""
    styled = tf.reshape(tf.where(chosen != KEEP_PHOTO), [-1])
    guide = tf.transpose(tf.gather(one_hot, styled, axis=3), [3, 1, 2, 0])
    guides, pools = [], 0
    for layer in STYLE_LAYERS:
        while pools < pools_before(layer):
            guide = tf.nn.avg_pool2d(guide, ksize=2, strides=2, padding="VALID")
            pools += 1
        guides.append(guide)
    return guides
