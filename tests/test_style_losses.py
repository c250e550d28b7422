"""The style losses (gram, w2, sliced): each term against numpy computed another way, and each
choice through a model exported with all three (and the default export, holding gram only), run
the server's way."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from helpers import CONTENT, STYLE_A, STYLE_B, decode, feed, stylize, yuv

from nst_client.errors import clean_message
from nst_model import losses
from nst_model.model import TARGET_LENGTHS
from nst_model.options import SLICED_QUANTILES, STYLE_LOSSES, W2_EPSILON
from nst_model.session import ServingSession

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


@pytest.fixture(scope="module")
def serving_all_losses(tmp_path_factory, weights_file) -> ServingSession:
    """A model exported with every style loss (nst-export --style-losses gram,w2,sliced), loaded the
    server's way."""
    from nst_export.exporter import export
    from nst_model.options import STYLE_LOSSES

    path = export(tmp_path_factory.mktemp("models") / "nst", weights=weights_file, style_losses=STYLE_LOSSES)
    session = ServingSession(path)
    yield session
    session.close()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_gram_and_its_one_matmul_gradient_match_numpy(precision):
    """G = F^T F / (H W) in float32, and the gradient of sum(A * G) is F (A + A^T) / (H W) for any A
    (not symmetric here), in the features' precision: in float32 to rounding, in bfloat16 (the
    features of a bfloat16 network) to bfloat16's rounding."""
    f = tf.cast(features(12, 10, 16, seed=3), precision)
    a = RNG.normal(size=(1, 16, 16)).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(f)
        g = losses.gram(f)
        objective = tf.reduce_sum(a * g)
    gradient = tape.gradient(objective, f)
    assert (g.dtype, gradient.dtype) == (tf.float32, f.dtype)
    flat = tf.cast(f, tf.float64).numpy().reshape(120, 16)
    np.testing.assert_allclose(g.numpy()[0], flat.T @ flat / 120, rtol=1e-5, atol=1e-6)
    expected = (flat @ (a[0] + a[0].T) / 120).reshape(1, 12, 10, 16)
    tolerance = 1e-5 if precision == "float32" else 1e-2
    got = tf.cast(gradient, tf.float64).numpy()
    np.testing.assert_allclose(got, expected, atol=tolerance * np.abs(expected).max())


def test_tv_loss_and_its_written_out_gradient_match_autodiff_of_the_reference_formula():
    image = tf.constant(RNG.uniform(size=(1, 7, 9, 3)).astype(np.float32))
    weight = tf.constant(30.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(image)
        got = losses.tv_loss(image, weight) * 0.5  # an upstream gradient other than 1
        x_var, y_var = image[:, :, 1:, :] - image[:, :, :-1, :], image[:, 1:, :, :] - image[:, :-1, :, :]
        expected = weight * (tf.reduce_mean(x_var**2) + tf.reduce_mean(y_var**2)) * 0.5  # tests/reference.py's
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(got, image), tape.gradient(expected, image), rtol=1e-5, atol=1e-7)


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


@pytest.mark.parametrize("level", [30.0, 3000.0])
def test_w2_of_a_flat_style_or_image_is_finite_and_its_distance(level):
    """Features of one colour (a flat style or content): the covariance is zero but for float32's
    rounding of the second moment, which made the Newton-Schulz root diverge (the objective not finite
    even at steps=0). Both ways round the term is now the distance, its gradient finite."""
    flat = tf.constant(level + np.random.default_rng(3).normal(0, 1e-3, (1, 24, 24, 16)), tf.float32)
    busy = features(12, 10, 16, seed=1) * level
    flat_target = losses.w2_target(*losses.mean_and_gram(flat))
    busy_target = losses.w2_target(*losses.mean_and_gram(tf.constant(busy)))
    (m1, c1), (m2, _) = gaussian(busy), gaussian(flat.numpy())
    expected = np.mean((m1 - m2) ** 2) + np.trace(c1) / 16  # against a point mass (and W2_EPSILON)
    assert float(losses.w2_term(tf.constant(busy), *flat_target)) == pytest.approx(expected, rel=2e-2)
    with tf.GradientTape() as tape:
        tape.watch(flat)
        term = losses.w2_term(flat, *busy_target)
    assert float(term) == pytest.approx(expected, rel=2e-2)
    assert np.isfinite(tape.gradient(term, flat).numpy()).all()
    assert float(losses.w2_term(flat, *flat_target)) < 1e-3 * expected  # ~0 at itself


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


# ---- through the exported model ------------------------------------------------------------------


@pytest.mark.parametrize("loss", STYLE_LOSSES)
def test_each_loss_runs_chunked_as_one_call_with_its_own_targets(serving_all_losses, loss):
    content = decode(serving_all_losses, CONTENT)
    inputs = {"content": content, "style": decode(serving_all_losses, STYLE_A), "style_loss": feed("style_loss", loss)}
    whole = serving_all_losses.run("pixels", {**inputs, "steps": np.int32(4)})
    first = serving_all_losses.run("pixels", {**inputs, "steps": np.int32(2)})
    assert first["style_targets"].shape == (TARGET_LENGTHS[loss],)
    state = {k: first[k] for k in ("image", "lbfgs_s", "lbfgs_y", "lbfgs_grad", "lbfgs_losses", "style_targets")}
    resumed = {"content": content, "style_loss": inputs["style_loss"], "content_target": first["content_target"]}
    last = serving_all_losses.run("pixels", {**resumed, **state, "steps": np.int32(2)})
    assert last["image_bytes"] == whole["image_bytes"]
    assert float(last["style_loss"]) > 0
    assert float(last["loss"]) < float(serving_all_losses.run("pixels", {**inputs, "steps": np.int32(0)})["loss"])


def test_sliced_is_reproducible_by_seed(serving_all_losses):
    runs = {seed: stylize(serving_all_losses, style_loss="sliced", seed=seed)["image_bytes"] for seed in (1, 2)}
    assert stylize(serving_all_losses, style_loss="sliced", seed=1)["image_bytes"] == runs[1]
    assert runs[1] != runs[2]


def test_the_losses_differ_and_gram_is_the_default(serving_all_losses):
    pngs = {loss: stylize(serving_all_losses, style_loss=loss)["image_bytes"] for loss in STYLE_LOSSES}
    assert len(set(pngs.values())) == 3
    assert stylize(serving_all_losses)["image_bytes"] == pngs["gram"]


def test_an_unknown_loss_is_invalid_argument_listing_the_choices(serving_all_losses):
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        stylize(serving_all_losses, style_loss="gatys")
    assert "style_loss must be one of gram, w2, sliced; got gatys" in clean_message(raised.value.message)


@pytest.mark.parametrize("loss", ["w2", "sliced"])
def test_the_default_export_holds_gram_only_and_says_how_to_export_the_others(serving, loss):
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        stylize(serving, style_loss=loss)
    assert clean_message(raised.value.message).startswith(
        f"this export holds the style losses gram only; got {loss} "
        "(export with nst-export --style-losses gram,w2,sliced to offer every one)"
    )
    assert stylize(serving, style_loss="gram")["image_bytes"] == stylize(serving)["image_bytes"]


def test_only_an_export_with_sliced_holds_a_sort(serving, serving_all_losses):
    """What the default export leaves out is really not in its graph (tf.sort is a TopKV2)."""

    def ops(session):
        graph = session.meta_graph.graph_def
        nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
        return {n.op for n in nodes}

    assert "TopKV2" in ops(serving_all_losses)
    assert "TopKV2" not in ops(serving)


def test_export_info_lists_the_style_losses(exported, serving_all_losses):
    info = json.loads((exported / "assets.extra" / "export_info.json").read_text())
    assert info["style_losses"] == ["gram"]
    path = pathlib.Path(serving_all_losses.path)
    assert json.loads((path / "assets.extra" / "export_info.json").read_text())["style_losses"] == list(STYLE_LOSSES)


def test_targets_of_another_loss_are_refused(serving_all_losses):
    content, style = decode(serving_all_losses, CONTENT), decode(serving_all_losses, STYLE_A)
    first = serving_all_losses.run("pixels", {"content": content, "style": style, "steps": np.int32(0)})
    resumed = {"content": content, "style_targets": first["style_targets"], "content_target": first["content_target"]}
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        serving_all_losses.run("pixels", {**resumed, "style_loss": feed("style_loss", "w2"), "steps": np.int32(1)})
    assert f"vector of {TARGET_LENGTHS['w2']} values (for this style_loss)" in clean_message(raised.value.message)


@pytest.mark.parametrize("value", ["gram,wasserstein", ",", "GRAM"])
def test_nst_export_refuses_unknown_style_losses_in_one_line(tmp_path, capsys, value):
    from nst_export import cli as export_cli

    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--model-dir", str(tmp_path / "nst"), "--style-losses", value])
    assert exit_info.value.code == 2
    message = f"give style losses among gram, w2, sliced, comma-separated; got {value!r}"
    assert capsys.readouterr().err.splitlines()[-1].endswith(message)
    assert not (tmp_path / "nst").exists()


@pytest.mark.parametrize("loss", ["w2", "sliced"])
def test_a_blend_of_one_style_is_that_style_for_each_loss(serving_all_losses, loss):
    alone = stylize(serving_all_losses, style_loss=loss)["image_bytes"]
    blended = stylize(serving_all_losses, [STYLE_A, STYLE_B], style_loss=loss, style_weights=(1.0, 0.0))
    mixed = stylize(serving_all_losses, [STYLE_A, STYLE_B], style_loss=loss)
    assert blended["image_bytes"] == alone
    assert mixed["image_bytes"] != alone


@pytest.mark.parametrize("loss", STYLE_LOSSES)
def test_real_each_style_loss_lowers_its_own_term_and_keeps_the_content(real_weights, loss):
    """With the real weights (in this process, a graph holding that one loss, as nst-stylize builds it):
    60 steps at 96 px take the loss's own term well down (measured: w2 to 0.32 of where it starts),
    and the scene is still there."""
    from nst_model.model import StyleTransfer
    from nst_model.runner import Stylizer
    from nst_model.signatures import Servable
    from nst_model.vgg import load_weights

    images = real_weights.parents[1] / "images"
    if not images.is_dir():
        pytest.skip(f"no test photos beside the weights at {images}")
    stylizer = Stylizer.from_module(Servable(StyleTransfer(load_weights(real_weights)[0], style_losses=(loss,))))
    pair = (images / "content" / "tubingen.jpg", images / "style" / "the_scream.jpg")
    options = {"style_loss": loss, "max_dim": 96, "chunk": 0, "progress": False}
    start, run = (stylizer.run(*pair, steps=steps, **options) for steps in (0, 60))
    assert run.losses["style_loss"] < 0.5 * start.losses["style_loss"]
    content, result = yuv(start.png)[..., 0], yuv(run.png)[..., 0]
    assert np.corrcoef(content.ravel(), result.ravel())[0, 1] > 0.5
