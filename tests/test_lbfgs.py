"""Projected L-BFGS on problems whose minimum is known."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import tensorflow as tf

from nst_model import lbfgs, precondition


def quadratic(a: np.ndarray, c: np.ndarray):
    a, c = tf.constant(a, tf.float32), tf.constant(c, tf.float32)

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            r = x - c
            f = 0.5 * tf.reduce_sum(r * tf.linalg.matvec(a, r))
        return f, tape.gradient(f, x), {"evaluated_at": x}

    return value_and_grad


def minimise(
    value_and_grad, x0: np.ndarray, iterations: int, metric: lbfgs.Metric = lbfgs.identity
) -> tuple[np.ndarray, list[float]]:
    empty = tf.zeros([0, *x0.shape])
    state = lbfgs.start(tf.constant(x0, tf.float32), value_and_grad, empty, empty)
    values = [float(state.f)]
    run = tf.function(lambda state: lbfgs.step(state, value_and_grad, metric), reduce_retracing=True)
    for _ in range(iterations):
        state = run(state)
        values.append(float(state.f))
        # The extras belong to the accepted point, not to the line search's last trial.
        np.testing.assert_array_equal(state.extra["evaluated_at"].numpy(), state.x.numpy())
    return state.x.numpy(), values


def test_finds_an_interior_minimum_of_an_ill_conditioned_quadratic():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    a = q @ np.diag(np.logspace(0, 3, 30)) @ q.T  # condition number 1000
    c = rng.uniform(0.2, 0.8, 30)
    x, values = minimise(quadratic(a, c), np.full(30, 0.5), 150)
    np.testing.assert_allclose(x, c, atol=1e-3)
    assert all(b <= a_ + 1e-6 for a_, b in itertools.pairwise(values))  # never goes up


def test_minimum_outside_the_box_lands_on_its_projection():
    a = np.diag(np.linspace(1, 50, 20))
    c = np.linspace(-1, 2, 20)  # partly outside [0, 1]
    x, _ = minimise(quadratic(a, c), np.full(20, 0.5), 40)
    np.testing.assert_allclose(x, np.clip(c, 0, 1), atol=1e-4)
    assert x.min() >= 0 and x.max() <= 1


def test_far_fewer_iterations_than_gradient_steps_would_need():
    rng = np.random.default_rng(1)
    a = np.diag(np.logspace(0, 2, 50))
    c = rng.uniform(0.1, 0.9, 50)
    _, values = minimise(quadratic(a, c), np.full(50, 0.5), 30)
    assert values[-1] < 1e-6 * values[0]


def test_history_round_trips_through_start():
    """Handing the pairs to a new start continues exactly: what chunked runs rely on."""
    value_and_grad = quadratic(np.diag(np.linspace(1, 9, 12)), np.linspace(0.1, 0.9, 12))
    empty = tf.zeros([0, 12])
    whole = lbfgs.start(tf.fill([12], 0.5), value_and_grad, empty, empty)
    for _ in range(6):
        whole = lbfgs.step(whole, value_and_grad)
    part = lbfgs.start(tf.fill([12], 0.5), value_and_grad, empty, empty)
    for _ in range(3):
        part = lbfgs.step(part, value_and_grad)
    part = lbfgs.start(part.x, value_and_grad, *lbfgs.history(part))
    assert lbfgs.history(part)[0].shape[0] == 3
    for _ in range(3):
        part = lbfgs.step(part, value_and_grad)
    np.testing.assert_array_equal(part.x.numpy(), whole.x.numpy())


def test_each_step_reports_the_evaluations_it_made():
    """`evaluations` counts the line search's calls, backtracks included (the benchmark's figure)."""
    # The minimum is 0.005 from the start: the first step (0.02 at most) overshoots and backtracks.
    inner = quadratic(np.diag(np.logspace(0, 2, 16)), np.linspace(0.495, 0.505, 16))
    calls = []

    def value_and_grad(x):
        calls.append(1)  # eager: tf.while_loop runs its body in Python, once per evaluation
        return inner(x)

    empty = tf.zeros([0, 16])
    state = lbfgs.start(tf.fill([16], 0.5), value_and_grad, empty, empty)
    assert (len(calls), int(state.evaluations)) == (1, 0)
    counts = []
    for _ in range(12):
        state = lbfgs.step(state, value_and_grad)
        counts.append(int(state.evaluations))
    assert sum(counts) == len(calls) - 1
    assert min(counts) == 1 and max(counts) > 1


def test_a_steepest_step_that_finds_nothing_lower_is_stuck_and_another_direction_is_not():
    """A failed line search with no history would repeat exactly from the same point: `stuck` ends
    the run. One that fails along the L-BFGS direction forgets the history and tries again."""
    inner = quadratic(np.diag(np.linspace(1, 4, 8)), np.linspace(0.3, 0.7, 8))

    def uphill(x):  # a gradient of the wrong sign: no step along -g lowers f
        f, g, extra = inner(x)
        return f, -g, extra

    empty = tf.zeros([0, 8])
    state = lbfgs.step(lbfgs.start(tf.fill([8], 0.5), uphill, empty, empty), uphill)
    assert bool(state.stuck) and int(state.evaluations) == lbfgs.BACKTRACKS + 1
    np.testing.assert_array_equal(state.x.numpy(), np.full(8, 0.5))

    state = lbfgs.start(tf.fill([8], 0.5), inner, empty, empty)
    for _ in range(3):
        state = lbfgs.step(state, inner)
    # The history from the right gradients proposes a direction the wrong one's line search rejects.
    failed = lbfgs.step(lbfgs.resume(state.x, state.f, -state.g, state.extra, *lbfgs.history(state)), uphill)
    assert int(failed.evaluations) == lbfgs.BACKTRACKS + 1 and not bool(failed.stuck)
    assert lbfgs.history(failed)[0].shape[0] == 0


def numpy_spectral(v: np.ndarray, power: float) -> np.ndarray:
    """The metric by numpy's FFT: each channel's frequencies scaled by max(f, 1 / longest side)^-power."""
    _, h, w, _ = v.shape
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
    scale = np.maximum(f, 1 / max(h, w)) ** -power
    channels = [np.fft.irfft2(np.fft.rfft2(v[0, :, :, c]) * scale, s=(h, w)) for c in range(3)]
    return np.stack(channels, -1)[None]


def test_spectral_metric_matches_numpy_and_is_symmetric_positive_definite():
    rng = np.random.default_rng(2)
    for shape in [(1, 7, 9, 3), (1, 8, 6, 3), (1, 1, 5, 3), (1, 12, 12, 3)]:
        u, v = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
        mu, mv = precondition.spectral(tf.constant(u)).numpy(), precondition.spectral(tf.constant(v)).numpy()
        np.testing.assert_allclose(mu, numpy_spectral(u, precondition.POWER), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.sum(mu * v), np.sum(u * mv), rtol=1e-4)
        assert np.sum(u * mu) > 0
    # Low frequencies take the larger steps: a constant image is scaled by the longest side, a
    # checkerboard (the highest frequency, f = 1/sqrt(2)) by sqrt(2).
    flat, board = np.ones((1, 8, 8, 3), np.float32), np.indices((8, 8)).sum(0) % 2 * 2.0 - 1.0
    board = np.repeat(board[None, :, :, None], 3, -1).astype(np.float32)
    np.testing.assert_allclose(precondition.spectral(tf.constant(flat)).numpy(), 8 * flat, rtol=1e-5)
    np.testing.assert_allclose(precondition.spectral(tf.constant(board)).numpy(), np.sqrt(2) * board, rtol=1e-5)


def test_a_metric_shaped_like_the_inverse_hessian_converges_where_the_scalar_guess_crawls():
    """On a quadratic whose Hessian is the metric's inverse, the second step is exact (the first
    guess is the inverse Hessian up to the scale L-BFGS learns); the scalar guess is still far."""
    c = tf.constant(np.random.default_rng(3).uniform(0.4, 0.6, (1, 24, 32, 3)), tf.float32)

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            f = 0.5 * tf.reduce_sum((x - c) * precondition.spectral(x - c, power=-2.0))
        return f, tape.gradient(f, x), {"evaluated_at": x}

    start = np.full((1, 24, 32, 3), 0.5, np.float32)
    _, shaped = minimise(value_and_grad, start, 2, functools.partial(precondition.spectral, power=2.0))
    _, scalar = minimise(value_and_grad, start, 2)
    assert shaped[2] < 1e-6 * shaped[0]
    assert scalar[2] > 1e-2 * scalar[0]
