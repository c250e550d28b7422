"""Winograd convolutions F(2x2,3x3) and F(4x4,3x3) written with TensorFlow ops, for the A/B against
oneDNN's direct convolution in winograd_ab.py (docs/benchmarks.md, "Winograd convolutions": faster
per evaluation in float32, not in the export: its graph took too long to prepare).

`conv2d(x, kernel, m)` equals `tf.nn.conv2d(x, kernel, 1, "SAME")` for a 3x3 kernel, NHWC, stride 1
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015): the input is cut into
overlapping (m+2)x(m+2) tiles at stride m, each tile and the kernel are transformed, the products
at each of the (m+2)^2 tile positions are one batched matmul [positions, tiles, Cin] x [positions,
Cin, Cout], and the output transform gives m x m outputs per tile. The transforms are separable and
written as reshapes, slices and sums. The gradient w.r.t. the input is the Winograd convolution of
the output's gradient with the flipped kernel.
"""

from __future__ import annotations

import tensorflow as tf

# (B^T, G, A^T) of F(m, 3) for m outputs per tile side.
MATRICES = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def _combine(coefficients, parts: list[tf.Tensor]) -> tf.Tensor:
    """sum_i c_i * parts_i, without the zero terms and without multiplying by +-1."""
    total = None
    for c, p in zip(coefficients, parts, strict=True):
        if c == 0:
            continue
        if total is None:
            total = p if c == 1 else -p if c == -1 else tf.cast(c, p.dtype) * p
        elif c in (1, -1):
            total = total + p if c == 1 else total - p
        else:
            total = total + tf.cast(c, p.dtype) * p
    return total


def _tiles(x: tf.Tensor, axis: int, count: tf.Tensor, m: int, a: int) -> list[tf.Tensor]:
    """The a rows (or columns) of each tile along `axis` of x, whose length is (count + 1) * m: row j
    of tile t is x[t * m + j], taken as a slice of x reshaped to [..., count + 1, m, ...]."""
    shape = tf.shape(x)
    x = tf.reshape(x, tf.concat([shape[:axis], [count + 1, m], shape[axis + 1 :]], 0))
    ranks = [slice(None)] * axis
    return [x[(*ranks, slice(j // m, j // m + count), j % m)] for j in range(a)]


def filter_transform(kernel: tf.Tensor, m: int) -> tf.Tensor:
    """G g G^T of a [3, 3, Cin, Cout] kernel as [(m+2)^2, Cin, Cout], computed in float32."""
    _, g, _ = MATRICES[m]
    g = tf.constant(g, tf.float32)
    u = tf.einsum("ku,uvco,lv->klco", g, tf.cast(kernel, tf.float32), g)
    shape = tf.shape(kernel)
    return tf.cast(tf.reshape(u, [(m + 2) ** 2, shape[2], shape[3]]), kernel.dtype)


def flipped(kernel: tf.Tensor) -> tf.Tensor:
    """The kernel whose SAME convolution of the output's gradient is the input's gradient: turned
    half round in space, input and output channels swapped."""
    return tf.transpose(kernel[::-1, ::-1], [0, 1, 3, 2])


def transforms(kernel: tf.Tensor, m: int) -> tuple[tf.Tensor, tf.Tensor]:
    """What conv2d takes for a [3, 3, Cin, Cout] kernel: its transform and that of the flipped kernel."""
    return filter_transform(kernel, m), filter_transform(flipped(kernel), m)


def conv2d(x: tf.Tensor, m: int, forward: tf.Tensor, backward: tf.Tensor) -> tf.Tensor:
    """tf.nn.conv2d(x, kernel, 1, "SAME") of a 3x3 kernel by Winograd F(m x m, 3 x 3), given
    transforms(kernel, m).

    The gradient w.r.t. x is the same Winograd convolution of the output's gradient with the
    flipped kernel (autodiff through the transforms' slices and stacks was 2 to 6 times slower
    than the forward pass). No gradient flows to the kernel: the network's weights are constants.
    """

    @tf.custom_gradient
    def convolve(x):
        return _winograd(x, forward, m), lambda upstream: _winograd(upstream, backward, m)

    return convolve(x)


def _winograd(x: tf.Tensor, u: tf.Tensor, m: int) -> tf.Tensor:
    """The convolution of x with the transformed kernel u: input transform, batched matmul, output transform."""
    bt, _, at = MATRICES[m]
    a = m + 2
    shape = tf.shape(x)
    n, h, w, c = shape[0], shape[1], shape[2], shape[3]
    th, tw = (h + m - 1) // m, (w + m - 1) // m
    # One pixel of zeros before (SAME), enough after for th + 1 (tw + 1) whole groups of m.
    x = tf.pad(x, [[0, 0], [1, (th + 1) * m - h - 1], [1, (tw + 1) * m - w - 1], [0, 0]])
    rows = _tiles(x, 1, th, m, a)  # a x [N, th, W', C]
    by_rows = [_combine(b, rows) for b in bt]
    v = [_combine(b, cols) for r in by_rows for cols in [_tiles(r, 2, tw, m, a)] for b in bt]  # a*a x [N,th,tw,C]
    v = tf.reshape(tf.stack(v), [a * a, -1, c])
    products = tf.matmul(v, u)  # [a*a, N*th*tw, Cout]
    k = tf.shape(products)[-1]
    products = tf.unstack(tf.reshape(products, [a, a, n, th, tw, k]), num=a)  # a x [a, N, th, tw, K]
    by_rows = [_combine(r, products) for r in at]  # m x [a, N, th, tw, K]
    out = tf.stack([tf.stack([_combine(q, tf.unstack(p, num=a)) for q in at], 3) for p in by_rows], 2)
    out = tf.reshape(out, [n, th * m, tw * m, k])  # [N, th, m, tw, m, K] interleaved
    return out[:, :h, :w]
