"""The colour methods and the style balance: each step against numpy computed another way, and each
option through the exported model, run the server's way."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers import feed, make_image, png_bytes, stylize, yuv

from nst_client.errors import clean_message
from nst_model import colors
from nst_model.options import COLORS
from nst_model.vgg import BGR_MEANS


def gaussian(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of an image's colours."""
    flat = image.reshape(-1, 3).astype(np.float64)
    return flat.mean(0), np.cov(flat.T, bias=True)


def test_histogram_matching_gives_the_style_the_contents_colour_statistics():
    content, style = make_image(30, 40, seed=1)[None], make_image(28, 28, seed=5)[None] * [0.3, 0.9, 0.5]
    matched = colors.match_histogram(tf.constant(style, tf.float32), tf.constant(content)).numpy()
    (m_c, c_c), (m_m, c_m) = gaussian(content), gaussian(matched)
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
    # Random VGG weights say nothing of how a recoloured style looks (the real-weights test in
    # test_controls.py measures that): here, only that it is not the plain run.
    assert stylize(serving, colors="histogram", **options)["image_bytes"] != stylize(serving, **options)["image_bytes"]
    assert np.abs(plain[..., 1:] - content[..., 1:]).mean() > 0.02


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"style_balance": "even"}, "style_balance must be one of reference, normalized"),
        ({"colors": "sepia"}, f"colors must be one of {', '.join(COLORS)}"),
        ({"colors": "histogram", "preserve_colors": True}, "preserve_colors is colors=swap: give one colour method"),
    ],
)
def test_bad_choices_are_invalid_argument(serving, inputs, message):
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        stylize(serving, **inputs)
    assert message in clean_message(raised.value.message)


def test_a_flat_style_keeps_a_sane_strength_when_normalized(serving):
    """A style of one colour at VGG's mean (an input of zeros: features of the biases only) has a target
    of nearly zero size: divided by it, its term was magnified without bound (here about 1e3 times a
    painting's, with the real weights 1e4). Each layer's divisor has a floor (NORMALIZED_FLOORS, measured
    with the real weights, about 1/25 of these random weights' sizes at block1: 32 times here)."""
    from helpers import CONTENT, STYLE_A

    grey = png_bytes(np.full((48, 48, 3), np.array(BGR_MEANS[::-1]) / 255, np.float32))

    def term(style: bytes) -> float:
        inputs = {"content": CONTENT, "style": style, "steps": 0, "max_dim": 40}
        return float(serving.run("serving_default", {k: feed(k, v) for k, v in inputs.items()})["style_loss"])

    assert term(grey) < 100 * term(STYLE_A)


def test_the_normalized_balance_evens_out_style_strength(serving):
    """Normalized, the style term at the content no longer scales with the style's size: doubling the
    style's contrast multiplies the reference term many times, the normalized one far less."""
    from helpers import CONTENT

    faint, strong = (png_bytes(0.5 + k * (make_image(48, 48, seed=2) - 0.5)) for k in (0.3, 1.0))

    def term(style: bytes, balance: str) -> float:
        inputs = {"content": CONTENT, "style": style, "steps": 0, "max_dim": 40, "style_balance": balance}
        return float(serving.run("serving_default", {k: feed(k, v) for k, v in inputs.items()})["style_loss"])

    reference = term(strong, "reference") / term(faint, "reference")
    normalized = term(strong, "normalized") / term(faint, "normalized")
    assert reference > 3 * normalized
    assert stylize(serving, style_balance="normalized")["image_bytes"] == stylize(serving)["image_bytes"]  # the default
    assert stylize(serving, style_balance="reference")["image_bytes"] != stylize(serving)["image_bytes"]
