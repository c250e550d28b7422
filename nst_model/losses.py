"""The terms of the objective, as pure functions of tensors.

Three style losses compare the image's features with the styles' at each style layer:
- gram: the mean squared difference of Gram matrices (Gatys et al.; the reference's);
- w2: the Wasserstein-2 distance between Gaussians fitted to the features (mean and covariance),
  as crowsonkb/style-transfer-pytorch does, the matrix square roots by Newton-Schulz iterations;
- sliced: the sliced Wasserstein distance of Heitz et al. (CVPR 2021): the features projected on
  random directions, sorted, and compared with the style's sorted projections.
Each is one StyleLoss (the end of this file), its one definition: the shapes of what it keeps of a
style at each style layer, the statistics a style contributes (blended linearly across styles),
the per-layer term and that term's size. `layer_sum` weighs the layers the same way for all three.
"""

from __future__ import annotations

import typing

import numpy as np
import tensorflow as tf

from nst_model.options import SLICED_QUANTILES, STYLE_LAYERS, W2_EPSILON, W2_ITERATIONS
from nst_model.vgg import CHANNELS

LAYER_CHANNELS = tuple(CHANNELS[layer.split("_")[0]] for layer in STYLE_LAYERS)


def wide(features: tf.Tensor) -> tf.Tensor:
    """Features of the network's precision as float32, for the losses that compute in it (the
    Gram matrix takes them as they are: its gradient runs in their precision)."""
    return tf.cast(features, tf.float32)


def gram(features: tf.Tensor) -> tf.Tensor:
    """Channel correlations of [N, H, W, C] features, in float32, divided by H*W as in the reference.

    The gradient is one matmul, F (U + U^T) / (H*W), where autodiff would run one per operand of
    F^T F (the same F twice) and add them. It runs in the features' own precision, that of the
    network they came from, and so needs no casts of feature maps: in bfloat16 the gradient is
    rounded to bfloat16 on its way into the network anyway. The Gram matrix itself is float32.
    """

    @tf.custom_gradient
    def correlations(f: tf.Tensor) -> tuple[tf.Tensor, typing.Callable[[tf.Tensor], tf.Tensor]]:
        # The gradient reads an op's output, not `f` itself: inside a switch_case branch (an export
        # with several style losses) the branch's input would reach the gradient unfed.
        f = tf.identity(f)
        wide = tf.cast(f, tf.float32)
        shape = tf.shape(f)
        locations = tf.cast(shape[1] * shape[2], tf.float32)

        def gradient(upstream: tf.Tensor) -> tf.Tensor:
            both = tf.cast((upstream + tf.linalg.matrix_transpose(upstream)) / locations, f.dtype)
            return tf.einsum("bijc,bcd->bijd", f, both)

        return tf.einsum("bijc,bijd->bcd", wide, wide) / locations, gradient

    return correlations(features)


# Each loss applies its weight in the reference's order of operations, so that rounding, and with
# it the optimisation's path, matches the reference's.


def layer_sum(terms: list[tf.Tensor], weight: tf.Tensor, layer_weights: tf.Tensor) -> tf.Tensor:
    """Weighted mean over layers of the per-layer terms, times `weight`.

    `layer_weights` sum to 1. They are scaled by the layer count and the sum divided by it again,
    so that equal weights (0.2 * 5 == 1 exactly in float32) round as the reference's plain mean.
    """
    count = len(terms)
    return tf.add_n([t * (layer_weights[i] * count) for i, t in enumerate(terms)]) * weight / count


def gram_term(image_gram: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.square(image_gram - target))


def guided_gram(features: tf.Tensor, guides: tf.Tensor) -> tf.Tensor:
    """Gram matrices [S, C, C] of [1, h, w, C] features weighted by each region's guidance
    [S, h, w, 1] (Gatys et al. 2017): (F g)^T (F g), divided by the region's sum of g^2, its area,
    rather than h*w, so that a region's statistics compare with a whole style's as a whole image's
    do, and a small region is not drowned. A guidance of ones gives `gram`."""
    locations = tf.cast(tf.shape(features)[1] * tf.shape(features)[2], tf.float32)
    area = tf.reduce_sum(tf.square(guides), [1, 2, 3])
    return gram(features * tf.cast(guides, features.dtype)) * (locations / tf.maximum(area, 1e-12))[:, None, None]


def guided_gram_terms(features: tf.Tensor, guides: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """The Gram term of each region [S] against its own target [S, C, C]; 0 for a region with no
    area at this layer (too small to survive the pooling), which has nothing to match."""
    terms = tf.reduce_mean(tf.square(guided_gram(features, guides) - targets), [1, 2])
    # A product, not tf.where: the gradient then keeps no boolean, which the gradient of the
    # objective's mask/no-mask cond would pair with a float of the other branch (a type warning).
    return terms * tf.cast(tf.reduce_sum(guides, [1, 2, 3]) > 0, tf.float32)


# ---- Wasserstein-2 between Gaussians ---------------------------------------------------------------


def mean_and_gram(features: tf.Tensor) -> list[tf.Tensor]:
    """The features' mean [1, C] and second raw moment (the Gram matrix) [1, C, C]: unlike the
    covariance, both blend linearly across styles."""
    return [tf.reduce_mean(features, [1, 2]), gram(features)]


def lifted(covariance: tf.Tensor) -> tf.Tensor:
    """A covariance [1, C, C], its diagonal lifted by W2_EPSILON: dead (all-zero) channels would
    otherwise make it singular, and the square root's gradient unbounded."""
    return covariance + W2_EPSILON * tf.eye(tf.shape(covariance)[-1], batch_shape=[1])


def covariance(mean: tf.Tensor, second_moment: tf.Tensor) -> tf.Tensor:
    """The (lifted) covariance of a blend of styles from its mean and second moment, made positive
    semi-definite first. For a flat style (one colour) the covariance is nearly zero and the
    subtraction leaves float32's rounding of the second moment (about 1e-7 of the squared mean,
    far above W2_EPSILON), with negative eigenvalues on which the Newton-Schulz iterations diverge;
    they are clipped to zero (an eigendecomposition, once per run)."""
    raw = second_moment - tf.einsum("bc,bd->bcd", mean, mean)
    values, vectors = tf.linalg.eigh(0.5 * (raw + tf.linalg.matrix_transpose(raw)))
    return lifted(tf.einsum("bij,bj,bkj->bik", vectors, tf.maximum(values, 0.0), vectors))


def sqrtm(matrix: tf.Tensor) -> tf.Tensor:
    """Square root of symmetric positive definite [1, C, C] matrices by W2_ITERATIONS coupled
    Newton-Schulz iterations: plain matmuls, so it runs (and differentiates) in any graph."""
    norm = tf.norm(matrix, axis=[-2, -1], keepdims=True)
    eye = tf.eye(tf.shape(matrix)[-1], batch_shape=[1])

    def iteration(y: tf.Tensor, z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        t = 0.5 * (3.0 * eye - z @ y)
        return y @ t, t @ z

    # A loop, not unrolled: the graph holds one iteration (and one of its gradient) per use.
    y, _ = tf.while_loop(lambda *_: True, iteration, (matrix / norm, eye), maximum_iterations=W2_ITERATIONS)
    return y * tf.sqrt(norm)


def w2_target(mean: tf.Tensor, second_moment: tf.Tensor) -> list[tf.Tensor]:
    """What the w2 term needs of the (blended) style: its mean and the square root of its covariance,
    computed once per run rather than at every step."""
    return [mean, sqrtm(covariance(mean, second_moment))]


def w2_term(features: tf.Tensor, target_mean: tf.Tensor, target_root: tf.Tensor) -> tf.Tensor:
    """Squared W2 distance between the Gaussians of the image's and the style's features, per channel:
    |m - m_s|^2 + tr(S + S_s - 2 (S_s^1/2 S S_s^1/2)^1/2), both divided by C."""
    # Centred before the product, unlike the styles' blend: no cancellation, whatever the image.
    mean = tf.reduce_mean(features, [1, 2])
    cov = lifted(gram(features - mean[:, None, None, :]))
    cross = sqrtm(target_root @ cov @ target_root)
    traces = tf.linalg.trace(target_root @ target_root + cov - 2.0 * cross)
    channels = tf.cast(tf.shape(mean)[-1], tf.float32)
    return tf.reduce_mean(tf.square(mean - target_mean)) + tf.reduce_sum(traces) / channels


def w2_size(target_mean: tf.Tensor, target_root: tf.Tensor) -> tf.Tensor:
    """The w2 term of the style against all-zero features: |m_s|^2 + tr(S_s), both divided by C."""
    channels = tf.cast(tf.shape(target_mean)[-1], tf.float32)
    return tf.reduce_mean(tf.square(target_mean)) + tf.reduce_sum(tf.square(target_root)) / channels


# ---- sliced Wasserstein -----------------------------------------------------------------------------


def directions(channels: int, seed: tf.Tensor, layer: int) -> tf.Tensor:
    """`channels` random unit directions [C, C] (one per column) for a layer, from the request's seed:
    stateless, so the same request projects on the same directions in every call of a run. They stay
    fixed for the run (Heitz et al. draw new ones each step), which keeps the objective deterministic,
    as L-BFGS needs."""
    d = tf.random.stateless_normal([channels, channels], seed=tf.stack([seed, layer + 1]))
    return d / tf.norm(d, axis=0, keepdims=True)


def sorted_projections(features: tf.Tensor, dirs: tf.Tensor) -> tf.Tensor:
    """The features [1, H, W, C] projected on each direction and sorted: [C, H*W]."""
    flat = tf.reshape(features, [-1, tf.shape(features)[-1]])
    return tf.sort(tf.transpose(flat @ dirs), axis=-1)


def resample(values: tf.Tensor, count: tf.Tensor | int) -> tf.Tensor:
    """Sorted rows [C, M] resampled to `count` points by linear interpolation at evenly spaced
    quantiles (pixel centres), so that distributions of different sizes compare point by point."""
    size = tf.shape(values)[-1]
    positions = (tf.range(count, dtype=tf.float32) + 0.5) * tf.cast(size, tf.float32) / tf.cast(count, tf.float32)
    positions = tf.clip_by_value(positions - 0.5, 0.0, tf.cast(size - 1, tf.float32))
    low = tf.cast(tf.floor(positions), tf.int32)
    high = tf.minimum(low + 1, size - 1)
    frac = positions - tf.cast(low, tf.float32)
    return tf.gather(values, low, axis=-1) * (1.0 - frac) + tf.gather(values, high, axis=-1) * frac


def sliced_target(features: tf.Tensor, dirs: tf.Tensor) -> list[tf.Tensor]:
    """A style's sorted projections at SLICED_QUANTILES quantiles [C, Q]. Averaged across styles,
    quantile functions give the Wasserstein barycentre of the styles along each direction."""
    return [resample(sorted_projections(features, dirs), SLICED_QUANTILES)]


def sliced_term(features: tf.Tensor, dirs: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Mean squared difference between the image's sorted projections and the style's, the style's
    resampled to the image's pixel count."""
    projected = sorted_projections(features, dirs)
    return tf.reduce_mean(tf.square(projected - resample(target, tf.shape(projected)[-1])))


# ---- the style losses, one class each ------------------------------------------------------------


class StyleLoss:
    """One style loss, defined in one place. Per style layer k (of LAYER_CHANNELS[k] channels): the
    shapes of what it keeps of a style, the `statistics` a style's features give (blended linearly
    across styles), the `target` made of the blend once per run, the `term` comparing the image's
    features with the target, and the term's `size` (its value for all-zero features), by which
    style_balance=normalized divides it. `seed` fixes the random directions of those that use them."""

    name: str  # as options.STYLE_LOSSES spells it

    def layer_shapes(self, channels: int) -> tuple[tuple[int, ...], ...]:
        raise NotImplementedError

    def statistics(self, features: tf.Tensor, layer: int, seed: tf.Tensor) -> list[tf.Tensor]:
        raise NotImplementedError

    def target(self, blended: list[tf.Tensor]) -> list[tf.Tensor]:
        return blended

    def term(self, features: tf.Tensor, target: list[tf.Tensor], layer: int, seed: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def size(self, target: list[tf.Tensor]) -> tf.Tensor:
        return tf.reduce_mean(tf.square(target[0]))

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The shapes of the targets of every style layer, in order, as the state packs them."""
        return [shape for channels in LAYER_CHANNELS for shape in self.layer_shapes(channels)]

    @property
    def length(self) -> int:
        """The length of the packed targets (the `style_targets` state)."""
        return sum(int(np.prod(shape)) for shape in self.shapes)

    def by_layer(self, parts: list[tf.Tensor]) -> list[list[tf.Tensor]]:
        """Its targets (or statistics) for every style layer, in one list, as a list per layer."""
        count = len(self.layer_shapes(1))
        return [parts[k : k + count] for k in range(0, len(parts), count)]


class Gram(StyleLoss):
    """The Gram matrices [1, C, C] (Gatys et al.; the reference's)."""

    name = "gram"

    def layer_shapes(self, channels: int) -> tuple[tuple[int, ...], ...]:
        return ((1, channels, channels),)

    def statistics(self, features: tf.Tensor, layer: int, seed: tf.Tensor) -> list[tf.Tensor]:
        return [gram(features)]

    def term(self, features: tf.Tensor, target: list[tf.Tensor], layer: int, seed: tf.Tensor) -> tf.Tensor:
        return gram_term(gram(features), target[0])


class W2(StyleLoss):
    """The mean [1, C] and the square root of the covariance [1, C, C], from the blended mean and
    second moment."""

    name = "w2"

    def layer_shapes(self, channels: int) -> tuple[tuple[int, ...], ...]:
        return ((1, channels), (1, channels, channels))

    def statistics(self, features: tf.Tensor, layer: int, seed: tf.Tensor) -> list[tf.Tensor]:
        return mean_and_gram(wide(features))

    def target(self, blended: list[tf.Tensor]) -> list[tf.Tensor]:
        return w2_target(*blended)

    def term(self, features: tf.Tensor, target: list[tf.Tensor], layer: int, seed: tf.Tensor) -> tf.Tensor:
        return w2_term(wide(features), *target)

    def size(self, target: list[tf.Tensor]) -> tf.Tensor:
        return w2_size(*target)


class Sliced(StyleLoss):
    """The quantiles [C, SLICED_QUANTILES] of the sorted projections on the layer's directions."""

    name = "sliced"

    def layer_shapes(self, channels: int) -> tuple[tuple[int, ...], ...]:
        return ((channels, SLICED_QUANTILES),)

    def statistics(self, features: tf.Tensor, layer: int, seed: tf.Tensor) -> list[tf.Tensor]:
        return sliced_target(wide(features), directions(LAYER_CHANNELS[layer], seed, layer))

    def term(self, features: tf.Tensor, target: list[tf.Tensor], layer: int, seed: tf.Tensor) -> tf.Tensor:
        return sliced_term(wide(features), directions(LAYER_CHANNELS[layer], seed, layer), target[0])


STYLE_LOSS: dict[str, StyleLoss] = {"gram": Gram(), "w2": W2(), "sliced": Sliced()}  # by options.STYLE_LOSSES' names


# ---- content and smoothness -------------------------------------------------------------------------


def content_loss(features: tf.Tensor, target: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.square(features - target)) * weight


def tv_loss(image: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    """Mean squared difference of horizontal plus that of vertical neighbours, times `weight`.

    Its gradient, 2 weight (D^T d_x / n_x + D^T d_y / n_y) for the neighbours' differences d, is
    written out with pads: autodiff's would scatter each of the four slices into a zero image.
    """

    @tf.custom_gradient
    def total_variation(x: tf.Tensor, weight: tf.Tensor) -> tuple[tf.Tensor, typing.Callable]:
        across, down = x[:, :, 1:] - x[:, :, :-1], x[:, 1:] - x[:, :-1]
        value = weight * (tf.reduce_mean(tf.square(across)) + tf.reduce_mean(tf.square(down)))

        def gradient(upstream: tf.Tensor) -> tuple[tf.Tensor, None]:
            a = across * (2.0 * weight * upstream / tf.cast(tf.size(across), tf.float32))
            d = down * (2.0 * weight * upstream / tf.cast(tf.size(down), tf.float32))
            # Each difference x[i+1] - x[i] pulls x[i+1] one way and x[i] the other.
            return _shift(a, 2, 1) - _shift(a, 2, 0) + _shift(d, 1, 1) - _shift(d, 1, 0), None

        return value, gradient

    return total_variation(image, weight)


def _shift(t: tf.Tensor, axis: int, before: int) -> tf.Tensor:
    """`t` padded with one zero along `axis`, before (1) or after (0) its values."""
    padding = [[0, 0]] * 4
    padding[axis] = [before, 1 - before]
    return tf.pad(t, padding)
