"""Projected L-BFGS as pure functions of tensors, for the while-loop carry.

Converges in far fewer evaluations than Adam on the style-transfer objective. The image stays in
[0, 1] by projection: variables held at a bound by their gradient are frozen for the direction,
and every trial point is clipped. A backtracking (Armijo) line search only accepts points that
lower the objective, so a step can never make it blow up.
"""

from __future__ import annotations

import typing
from collections.abc import Callable

import tensorflow as tf

HISTORY = 10  # correction pairs kept, as scipy's L-BFGS-B and torch.optim.LBFGS do
FIRST_STEP = 0.02  # largest pixel change of the first step, before any curvature is known
ARMIJO = 1e-4  # sufficient decrease: f(x + t d) <= f(x) + ARMIJO * g.(x_t - x)
BACKTRACKS = 10  # halvings of the step before giving up on a direction

# v -> M v: a symmetric positive-definite metric, the shape of the initial inverse-Hessian guess
# (scaled each step by the newest pair, so its overall size does not matter).
Metric = Callable[[tf.Tensor], tf.Tensor]

# x -> (objective, gradient, extra): `extra` is any nest of tensors computed along with them
# (e.g. the loss terms), kept with the accepted point so that nobody needs another pass at it.
ValueAndGrad = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor, typing.Any]]


class Iterate(typing.NamedTuple):
    """Where L-BFGS stands after a step: the point, its objective and gradient, and the history."""

    x: tf.Tensor  # the point, any shape, within [0, 1]
    f: tf.Tensor  # objective at x
    g: tf.Tensor  # gradient at x
    s: tf.Tensor  # [HISTORY, *x.shape] past steps, newest last; unused rows are zero
    y: tf.Tensor  # [HISTORY, *x.shape] the matching gradient changes
    extra: typing.Any  # what value_and_grad computed at x besides f and g
    evaluations: tf.Tensor  # int32: value_and_grad calls of the step that led here (0 at a start)
    # The step that led here was already steepest descent and found no lower point: from the same
    # point, gradient and (empty) history every later step would repeat it exactly, so a run stops.
    stuck: tf.Tensor


def start(x: tf.Tensor, value_and_grad: ValueAndGrad, s: tf.Tensor, y: tf.Tensor) -> Iterate:
    """The iterate at `x`, continuing from `k <= HISTORY` stored pairs [k, *x.shape] (k may be 0)."""
    return resume(x, *value_and_grad(x), s, y)


def resume(x: tf.Tensor, f: tf.Tensor, g: tf.Tensor, extra: typing.Any, s: tf.Tensor, y: tf.Tensor) -> Iterate:
    """The iterate at `x` from its objective, gradient and extras as an earlier run computed them:
    a resumed run needs no evaluation before its first step."""
    padding = [[HISTORY - tf.shape(s)[0], 0]] + [[0, 0]] * len(x.shape)
    return Iterate(x, f, g, tf.pad(s, padding), tf.pad(y, padding), extra, tf.constant(0), tf.constant(False))


def history(state: Iterate) -> tuple[tf.Tensor, tf.Tensor]:
    """The stored pairs without the unused rows, to hand to a later `start`."""
    used = tf.reduce_any(tf.not_equal(state.s, 0.0), axis=list(range(1, len(state.s.shape))))
    return tf.boolean_mask(state.s, used), tf.boolean_mask(state.y, used)


def _dot(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(a * b)


def identity(v: tf.Tensor) -> tf.Tensor:
    return v


def direction(g: tf.Tensor, s: tf.Tensor, y: tf.Tensor, metric: Metric = identity) -> tf.Tensor:
    """-H g by the two-loop recursion (H: the inverse-Hessian estimate from the pairs, grown from
    gamma * metric).

    Unused (zero) pairs get rho = 0 and drop out. With no pairs at all, a descent step along
    -metric(g) whose largest pixel change is FIRST_STEP.
    """
    sy = [_dot(s[i], y[i]) for i in range(HISTORY)]
    rho = [tf.math.divide_no_nan(1.0, v) for v in sy]
    q, alphas = g, [None] * HISTORY
    for i in reversed(range(HISTORY)):
        alphas[i] = rho[i] * _dot(s[i], q)
        q = q - alphas[i] * y[i]
    # The usual initial inverse-Hessian guess, gamma * metric with gamma = s.y / y.My of the newest pair.
    mq = metric(q)
    gamma = tf.math.divide_no_nan(sy[-1], _dot(y[-1], metric(y[-1])))
    r = tf.where(sy[-1] > 0.0, gamma, _first_scale(mq)) * mq
    for i in range(HISTORY):
        r = r + s[i] * (alphas[i] - rho[i] * _dot(y[i], r))
    return -r


def _first_scale(g: tf.Tensor) -> tf.Tensor:
    return FIRST_STEP / tf.maximum(tf.reduce_max(tf.abs(g)), 1e-30)


def _steepest(g: tf.Tensor, metric: Metric) -> tf.Tensor:
    """`direction` without pairs: along -metric(g), its largest pixel change FIRST_STEP."""
    mg = metric(g)
    return -_first_scale(mg) * mg


def step(state: Iterate, value_and_grad: ValueAndGrad, metric: Metric = identity) -> Iterate:
    """One projected L-BFGS iteration: direction, line search, history update."""
    x, f, g, s, y, extra, _, _ = state
    # Variables pressed against a bound by their gradient stay there for this step.
    free = tf.cast(~(((x <= 0.0) & (g > 0.0)) | ((x >= 1.0) & (g < 0.0))), tf.float32)
    d = direction(g * free, s, y, metric) * free
    descends = _dot(g, d) < 0.0
    steepest = tf.logical_not(descends) | tf.reduce_all(tf.equal(s[-1], 0.0))  # no pairs: direction's own
    # A direction that does not descend (stale curvature): forget it, take steepest descent.
    # (tf.cond, not tf.where: a branch passes the history on, where a select would copy it.)
    s, y, d = tf.cond(
        descends,
        lambda: (s, y, d),
        lambda: (tf.zeros_like(s), tf.zeros_like(y), _steepest(g * free, metric) * free),
    )

    def trial(t):
        x_t = tf.clip_by_value(x + t * d, 0.0, 1.0)
        return (x_t, *value_and_grad(x_t))

    def rejected(i, t, x_t, f_t, g_t, extra_t):
        sufficient = f_t <= f + ARMIJO * _dot(g, x_t - x)
        return (i < BACKTRACKS) & ~(sufficient & tf.math.is_finite(f_t))

    def halve(i, t, *_):
        return (i + 1, t / 2, *trial(t / 2))

    halvings, _, x_t, f_t, g_t, extra_t = tf.while_loop(rejected, halve, (0, 1.0, *trial(1.0)))
    evaluations = halvings + 1
    improved = (f_t < f) & tf.math.is_finite(f_t)
    s_new, y_new = x_t - x, g_t - g
    curvature = improved & (_dot(s_new, y_new) > 1e-10 * _dot(y_new, y_new))
    s, y = tf.cond(
        curvature,
        lambda: (tf.concat([s[1:], s_new[None]], 0), tf.concat([y[1:], y_new[None]], 0)),
        lambda: (s, y),
    )
    # No better point along d: stay, and forget the curvature that proposed it.
    return tf.cond(
        improved,
        lambda: Iterate(x_t, f_t, g_t, s, y, extra_t, evaluations, tf.constant(False)),
        lambda: Iterate(x, f, g, tf.zeros_like(s), tf.zeros_like(y), extra, evaluations, steepest),
    )
