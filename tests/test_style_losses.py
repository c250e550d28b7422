"""The style losses (gram, w2, sliced) and colour methods: each term against numpy computed another
way, and each option through the exported model, run the server's way."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_image
from test_controls import CONTENT, STYLE_A, decode, feed, stylize, yuv

from nst_client.errors import clean_message
from nst_model import colors, losses
from nst_model.model import TARGET_LENGTHS
from nst_model.options import COLORS, SLICED_QUANTILES, STYLE_LOSSES, W2_EPSILON

RNG = np.random.default_rng(7)


def features(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """Post-ReLU-like features: non-negative, correlated channels, some dead."""
    rng = np.random.default_rng(seed)
    mixed = rng.normal(size=(height * width, channels)) @ rng.normal(size=(channels, channels)) / np.sqrt(channels)
    out = np.maximum(mixed + 0.3, 0.0)
    out[:, :2] = 0.0  # dead channels: the covariance is singular but for W2_EPSILON
    return out.reshape(1, height, width, channels).astype(np.float32)


def spd_root(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.maximum(values, 0.0))) @ vectors.T


def gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean = flat.mean(0)
    return mean, np.cov(flat.T, bias=True) + W2_EPSILON * np.eye(flat.shape[1])


def test_sqrtm_is_the_symmetric_square_root():
    a = RNG.normal(size=(32, 32))
    matrix = a @ a.T / 32 + 0.05 * np.eye(32)
    root = losses.sqrtm(tf.constant(matrix[None], tf.float32)).numpy()[0]
    np.testing.assert_allclose(root, spd_root(matrix), atol=2e-3 * np.abs(spd_root(matrix)).max())


def test_w2_term_is_the_wasserstein_distance_between_gaussians():
    image, style = features(12, 10, 16, seed=1), features(9, 14, 16, seed=2)
    target_mean, target_root = losses.w2_target(*losses.mean_and_gram(tf.constant(style)))
    term = float(losses.w2_term(tf.constant(image), target_mean, target_root))
    (m1, c1), (m2, c2) = gaussian(image), gaussian(style)
    root2 = spd_root(c2)
    expected = np.mean((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * spd_root(root2 @ c1 @ root2)) / 16
    assert term == pytest.approx(expected, rel=2e-2)
    assert float(losses.w2_term(tf.constant(style), target_mean, target_root)) < 0.02 * expected  # ~0 at itself


def test_sliced_term_compares_sorted_projections():
    image, style = features(12, 10, 8, seed=3), features(20, 16, 8, seed=4)
    dirs = losses.directions(8, tf.constant(5), 0)
    np.testing.assert_allclose(np.linalg.norm(dirs.numpy(), axis=0), 1.0, rtol=1e-5)
    target = losses.sliced_target(tf.constant(style), dirs)[0]
    assert target.shape == (8, SLICED_QUANTILES)
    term = float(losses.sliced_term(tf.constant(image), dirs, target))

    def quantiles(x: np.ndarray, count: int) -> np.ndarray:
        projected = np.sort(x.reshape(-1, 8) @ dirs.numpy(), axis=0).T  # [C, N]
        at = (np.arange(count) + 0.5) / count * projected.shape[1] - 0.5
        return np.stack([np.interp(at, np.arange(projected.shape[1]), row) for row in projected])

    expected = np.mean((quantiles(image, 120) - quantiles(style, 120)) ** 2)
    assert term == pytest.approx(expected, rel=2e-2)  # through 1024 quantiles and back: a little off
    assert float(losses.sliced_term(tf.constant(style), dirs, target)) < 1e-3 * expected


def test_directions_come_from_the_seed():
    a, b = (losses.directions(16, tf.constant(s), 2).numpy() for s in (1, 2))
    np.testing.assert_array_equal(a, losses.directions(16, tf.constant(1), 2).numpy())
    assert not np.allclose(a, b)
    assert not np.allclose(a, losses.directions(16, tf.constant(1), 3).numpy())  # each layer its own


def test_histogram_matching_gives_the_style_the_contents_colour_statistics():
    content, style = make_image(30, 40, seed=1)[None], make_image(28, 28, seed=5)[None] * [0.3, 0.9, 0.5]
    matched = colors.match_histogram(tf.constant(style, tf.float32), tf.constant(content)).numpy()
    (m_c, c_c), (m_m, c_m) = (gaussian(x[..., None, :].reshape(1, -1, 1, 3)) for x in (content, matched))
    np.testing.assert_allclose(m_m, m_c, atol=0.02)  # clipping to [0, 1] moves it a little
    np.testing.assert_allclose(c_m, c_c, atol=0.01)


def test_luminance_matching_gives_the_style_the_contents_luminance_mean_and_spread():
    content, style = make_image(30, 40, seed=1)[None], 0.2 + 0.3 * make_image(28, 28, seed=5)[None]
    matched = colors.match_luminance(tf.constant(style), tf.constant(content)).numpy()
    luma = tf.image.rgb_to_yuv(content).numpy()[..., 0]
    assert np.allclose(matched[..., 0], matched[..., 1]) and np.allclose(matched[..., 0], matched[..., 2])
    assert matched[..., 0].mean() == pytest.approx(luma.mean(), abs=0.01)
    assert matched[..., 0].std() == pytest.approx(luma.std(), rel=0.05)


# ---- through the exported model ------------------------------------------------------------------


@pytest.mark.parametrize("loss", STYLE_LOSSES)
def test_each_loss_runs_chunked_as_one_call_with_its_own_targets(serving, loss):
    content = decode(serving, CONTENT)
    inputs = {"content": content, "style": decode(serving, STYLE_A), "style_loss": feed("style_loss", loss)}
    whole = serving.run("pixels", {**inputs, "steps": np.int32(4)})
    first = serving.run("pixels", {**inputs, "steps": np.int32(2)})
    assert first["style_targets"].shape == (TARGET_LENGTHS[loss],)
    state = {k: first[k] for k in ("image", "lbfgs_s", "lbfgs_y", "lbfgs_grad", "lbfgs_losses", "style_targets")}
    resumed = {"content": content, "style_loss": inputs["style_loss"], "content_target": first["content_target"]}
    last = serving.run("pixels", {**resumed, **state, "steps": np.int32(2)})
    assert last["image_bytes"] == whole["image_bytes"]
    assert float(last["style_loss"]) > 0
    assert float(last["loss"]) < float(serving.run("pixels", {**inputs, "steps": np.int32(0)})["loss"])


def test_sliced_is_reproducible_by_seed(serving):
    runs = {seed: stylize(serving, style_loss="sliced", seed=seed)["image_bytes"] for seed in (1, 2)}
    assert stylize(serving, style_loss="sliced", seed=1)["image_bytes"] == runs[1]
    assert runs[1] != runs[2]


def test_the_losses_differ_and_gram_is_the_default(serving):
    pngs = {loss: stylize(serving, style_loss=loss)["image_bytes"] for loss in STYLE_LOSSES}
    assert len(set(pngs.values())) == 3
    assert stylize(serving)["image_bytes"] == pngs["gram"]


def test_colors_swap_is_preserve_colors_and_the_methods_keep_the_contents_chroma(serving):
    options = {"steps": 10, "learning_rate": 0.05}
    assert (
        stylize(serving, colors="swap", **options)["image_bytes"]
        == stylize(serving, preserve_colors=True, **options)["image_bytes"]
    )
    content = yuv(stylize(serving, steps=0)["image_bytes"])
    plain = yuv(stylize(serving, **options)["image_bytes"])
    drift = {c: np.abs(yuv(stylize(serving, colors=c, **options)["image_bytes"])[..., 1:] - content[..., 1:]).mean()
             for c in ("histogram", "luminance")}  # fmt: skip
    assert drift["luminance"] < 0.005  # the content's own chroma, up to uint8 rounding
    assert drift["histogram"] < np.abs(plain[..., 1:] - content[..., 1:]).mean()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"style_loss": "gatys"}, "style_loss must be one of gram, w2, sliced"),
        ({"colors": "sepia"}, f"colors must be one of {', '.join(COLORS)}"),
        ({"colors": "histogram", "preserve_colors": True}, "preserve_colors is colors=swap: give one colour method"),
    ],
)
def test_bad_choices_are_invalid_argument(serving, inputs, message):
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        stylize(serving, **inputs)
    assert message in clean_message(raised.value.message)


def test_targets_of_another_loss_are_refused(serving):
    content, style = decode(serving, CONTENT), decode(serving, STYLE_A)
    first = serving.run("pixels", {"content": content, "style": style, "steps": np.int32(0)})
    resumed = {"content": content, "style_targets": first["style_targets"], "content_target": first["content_target"]}
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        serving.run("pixels", {**resumed, "style_loss": feed("style_loss", "w2"), "steps": np.int32(1)})
    assert f"vector of {TARGET_LENGTHS['w2']} values (for this style_loss)" in clean_message(raised.value.message)
