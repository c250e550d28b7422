"""The artist's controls: optional inputs with defaults, each doing what it says, checked the server's way.

Random weights and small images, so each control is checked for doing *something* measurable and
for its exact equivalences (one style == a blend of it alone, chunked == one call); the tests at the
end use the real VGG19 weights and photos, and skip without them.
"""

from __future__ import annotations

import argparse
import pathlib
import shlex

import numpy as np
import pytest
import tensorflow as tf
from helpers import BASE, CONTENT, STYLE_A, STYLE_B, decode, feed, png_bytes, rgb, stylize, yuv

from nst_model import runner
from nst_model.options import DEFAULTS, PIXELS_OPTIONS, add_flags, from_flags
from nst_model.session import ServingSession

# ---- defaults ----------------------------------------------------------------------------------


def test_every_control_is_optional_with_its_default_in_the_signature(serving):
    for signature, names in (("serving_default", DEFAULTS), ("pixels", PIXELS_OPTIONS)):
        inputs = serving.signature(signature).inputs
        for name in names:
            tensor = serving.graph.get_tensor_by_name(inputs[name].name)
            assert tensor.op.type == "PlaceholderWithDefault", (signature, name)
            default = np.asarray(serving.session.run(tensor))
            expected = DEFAULTS[name].encode() if isinstance(DEFAULTS[name], str) else DEFAULTS[name]
            np.testing.assert_array_equal(default, np.asarray(expected, default.dtype), err_msg=name)


def test_explicit_defaults_give_the_same_bytes_as_none(serving):
    explicit = {name: DEFAULTS[name] for name in PIXELS_OPTIONS if name not in ("steps",)}
    assert stylize(serving, **explicit)["image_bytes"] == stylize(serving)["image_bytes"]


# ---- several styles -----------------------------------------------------------------------------


def test_one_style_in_a_vector_or_blended_alone_equals_the_single_style(serving):
    single = stylize(serving)["image_bytes"]
    assert stylize(serving, [STYLE_A])["image_bytes"] == single
    assert stylize(serving, [STYLE_A], style_weights=[1.0])["image_bytes"] == single
    assert stylize(serving, [STYLE_A, STYLE_B], style_weights=[1.0, 0.0])["image_bytes"] == single
    assert stylize(serving, [STYLE_B, STYLE_A], style_weights=[0.0, 5.0])["image_bytes"] == single


def test_blend_weights_are_normalised_and_matter(serving):
    blends = {w: stylize(serving, [STYLE_A, STYLE_B], style_weights=list(w)) for w in ((3, 7), (0.3, 0.7), (7, 3))}
    assert blends[(3, 7)]["image_bytes"] == blends[(0.3, 0.7)]["image_bytes"]
    assert blends[(3, 7)]["image_bytes"] != blends[(7, 3)]["image_bytes"]
    equal = stylize(serving, [STYLE_A, STYLE_B])["image_bytes"]
    assert stylize(serving, [STYLE_A, STYLE_B], style_weights=[2.0, 2.0])["image_bytes"] == equal


def test_chunked_run_with_two_styles_and_every_control_equals_one_call(serving):
    """The runner pads the styles into one batch for `pixels` and passes every control: its chunks
    give serving_default's bytes."""
    controls = {
        "style_scale": 1.5,
        "style_weights": (3.0, 7.0),
        "preserve_colors": True,
        "init": "noise",
        "seed": 7,
        "pooling": "avg",
        "style_layer_weights": (1.0, 2.0, 3.0, 2.0, 1.0),
        "content_layer": "block4_conv2",
    }
    single = stylize(serving, [STYLE_A, STYLE_B], **controls)["image_bytes"]
    stylizer = runner.over_session(serving)  # the shared Session: no second load
    chunked = stylizer.run(CONTENT, [STYLE_A, STYLE_B], chunk=3, progress=False, **BASE, **controls)
    assert chunked.png == single


def test_pixels_crops_each_style_to_its_size(serving):
    """Padding beyond `style_sizes` is ignored: noise there changes nothing."""
    a, b = decode(serving, STYLE_A), decode(serving, STYLE_B)  # 40x40 and 24x40
    batch = np.zeros([2, 40, 40, 3], np.float32)
    batch[0], batch[1, :24] = a[0], b[0]
    noisy = batch.copy()
    noisy[1, 24:] = np.random.default_rng(0).random((16, 40, 3))
    feeds = {"content": decode(serving, CONTENT), "steps": np.int32(2), "style_sizes": np.int32([[40, 40], [24, 40]])}
    clean = serving.run("pixels", {**feeds, "style": batch})["image_bytes"]
    assert serving.run("pixels", {**feeds, "style": noisy})["image_bytes"] == clean
    assert stylize(serving, [STYLE_A, STYLE_B], steps=2)["image_bytes"] == clean


# ---- the other controls do something -------------------------------------------------------------


def test_style_scale_changes_the_style_targets(serving):
    """At step 0 the image is the content, so the style loss measures the targets alone."""
    losses = {s: float(stylize(serving, steps=0, style_scale=s)["style_loss"]) for s in (0.5, 1.0, 2.0)}
    assert len(set(losses.values())) == 3
    assert stylize(serving, style_scale=1.0)["image_bytes"] == stylize(serving)["image_bytes"]


def test_pooling_and_layers_change_the_objective(serving):
    start = stylize(serving, steps=0)
    assert float(stylize(serving, steps=0, pooling="avg")["style_loss"]) != float(start["style_loss"])
    first_layer = stylize(serving, steps=0, style_layer_weights=[1, 0, 0, 0, 0])
    assert float(first_layer["style_loss"]) != float(start["style_loss"])
    doubled = stylize(serving, style_layer_weights=[2] * 5)  # normalised: the same as the default
    assert doubled["image_bytes"] == stylize(serving)["image_bytes"]
    moved = stylize(serving, steps=0, content_layer="block4_conv2", init="noise")
    assert float(moved["content_loss"]) != float(stylize(serving, steps=0, init="noise")["content_loss"])


def test_preserve_colors_keeps_the_contents_chroma(serving):
    options = {"steps": 10, "learning_rate": 0.05}
    content = yuv(png_bytes(decode(serving, CONTENT)[0]))
    plain = yuv(stylize(serving, **options)["image_bytes"])
    kept = yuv(stylize(serving, preserve_colors=True, **options)["image_bytes"])
    assert np.abs(plain[..., 1:] - content[..., 1:]).mean() > 0.02  # the style did change the colours
    assert np.abs(kept[..., 1:] - content[..., 1:]).mean() < 0.005  # uint8 rounding and clipping only
    assert np.abs(kept[..., 0] - plain[..., 0]).mean() < 0.01  # with the stylised luminance


def test_preserve_colors_leaves_the_state_raw(serving):
    feeds = {"content": decode(serving, CONTENT), "style": decode(serving, STYLE_A), "steps": np.int32(3)}
    plain = serving.run("pixels", feeds)
    kept = serving.run("pixels", {**feeds, "preserve_colors": np.bool_(True)})
    np.testing.assert_array_equal(kept["image"], plain["image"])
    assert kept["image_bytes"] != plain["image_bytes"]


def test_noise_init_is_seeded_and_deterministic(serving):
    runs = {seed: stylize(serving, init="noise", seed=seed)["image_bytes"] for seed in (1, 2)}
    assert stylize(serving, init="noise", seed=1)["image_bytes"] == runs[1]
    assert runs[1] != runs[2]
    assert stylize(serving, seed=1)["image_bytes"] == stylize(serving, seed=2)["image_bytes"]  # content init


def test_init_images(serving):
    content = decode(serving, CONTENT)
    noise = rgb(stylize(serving, steps=0, init="noise", seed=3)["image_bytes"])
    np.testing.assert_allclose(noise.mean((0, 1)), np.array([123.68, 116.779, 103.939]) / 255, atol=0.02)
    assert 0.5 < noise.std() / (0.1 * content.std()) < 2
    style = stylize(serving, steps=0, init="style")["image_bytes"]
    expected = tf.image.resize(decode(serving, STYLE_A), content.shape[1:3], antialias=True)
    assert style == png_bytes(np.clip(expected[0].numpy(), 0, 1))


STUCK = "init=style: the optimisation could not move from the style image"


def test_init_style_never_returns_the_style_unmoved(serving):
    """A flat style (one colour) is refused as a start, saying why: the run used to stay there (std 0.1 of
    255) and hand it back as a result. Where nothing can move a start (no weight left), init=style is
    refused; another init is not."""
    for colour in ([123.68, 116.779, 103.939], [0, 0, 0]):  # VGG's mean colour, black
        flat = png_bytes(np.full((48, 48, 3), np.array(colour) / 255, np.float32))
        with pytest.raises(tf.errors.InvalidArgumentError, match="init=style needs a style with some texture"):
            stylize(serving, flat, init="style")
        assert stylize(serving, flat, init="content")["image_bytes"]
    still = {"style_weight": 0.0, "content_weight": 0.0, "tv_weight": 0.0}
    with pytest.raises(tf.errors.InvalidArgumentError, match=STUCK):
        stylize(serving, init="style", **still)
    assert stylize(serving, init="content", **still)["image_bytes"] == stylize(serving, steps=0)["image_bytes"]
    assert stylize(serving, init="style", steps=0)["image_bytes"]  # nothing asked, nothing refused


# ---- bad values ---------------------------------------------------------------------------------

BAD = {
    "init": ("zzz", "init must be one of content, noise, style"),
    "pooling": ("min", "pooling must be one of max, avg"),
    "content_layer": ("block3_conv1", "content_layer must be one of block5_conv2, block4_conv2"),
    "style_weights": ([1.0, 1.0, 1.0], "style_weights must be a vector with one weight per style"),
    "style_weights ": ([1.0, -1.0], "style_weights must be finite, >= 0 and not all zero"),
    "style_weights  ": ([0.0, 0.0], "style_weights must be finite, >= 0 and not all zero"),
    "style_weights   ": ([np.nan, 1.0], "style_weights must be finite, >= 0 and not all zero"),
    "style_scale": (0.0, "style_scale must be between 0.1 and 8"),
    "style_scale ": (np.inf, "style_scale must be between 0.1 and 8"),
    "style_scale  ": (0.2, "style sides must be between 16 and 2048 px after scaling by style_scale"),
    "style_layer_weights": ([1.0] * 4, "style_layer_weights must be a vector with one weight per style layer"),
    "style_layer_weights ": ([1, 1, -1, 1, 1], "style_layer_weights must be finite, >= 0 and not all zero"),
    "preserve_colors": ([True, False], "preserve_colors"),  # TF's own shape check may answer first
    "seed": ([1, 2], "seed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_control_is_invalid_argument_naming_it(serving, case):
    value, message = BAD[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        stylize(serving, [STYLE_A, STYLE_B], steps=1, **{case.strip(): value})


def test_bad_styles_are_invalid_argument(serving):
    with pytest.raises(tf.errors.InvalidArgumentError, match="style must be one encoded image or a vector of 1 to 8"):
        stylize(serving, [STYLE_A] * 9)
    with pytest.raises(tf.errors.InvalidArgumentError, match="style must be one encoded image or a vector"):
        stylize(serving, [[STYLE_A]])
    pixels = {"content": decode(serving, CONTENT), "style": np.zeros([2, 20, 20, 3], np.float32)}
    for sizes, message in (
        (np.int32([[20, 20]]), "style_sizes must be empty or shaped \\[styles, 2\\]"),
        (np.int32([[20, 20], [21, 20]]), "style_sizes must be between 1 and the batch height and width"),
        (np.int64([[20, 20], [20, 20]]), "to be int32 but int64 is provided"),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serving.run("pixels", {**pixels, "style_sizes": sizes, "steps": np.int32(1)})
    assert stylize(serving, steps=1)["image_bytes"].startswith(b"\x89PNG")  # still serving


# ---- command line and API ------------------------------------------------------------------------


def test_flags_cover_every_control():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    assert from_flags(parser.parse_args([])) == DEFAULTS
    flags = (
        "--style-scale 2 --style-weights 3 7 --preserve-colors --init noise --seed 5 --pooling avg "
        "--style-layer-weights 1 0 0 0 0 --content-layer block4_conv2"
    )
    args = parser.parse_args(shlex.split(flags))
    assert from_flags(args) == {
        **DEFAULTS,
        "style_scale": 2.0,
        "style_weights": (3.0, 7.0),
        "preserve_colors": True,
        "init": "noise",
        "seed": 5,
        "pooling": "avg",
        "style_layer_weights": (1.0, 0.0, 0.0, 0.0, 0.0),
        "content_layer": "block4_conv2",
    }
    for bad in ("--init zero", "--pooling min", "--style-layer-weights 1 2"):
        with pytest.raises(SystemExit):
            parser.parse_args(shlex.split(bad))


# ---- real weights -------------------------------------------------------------------------------


def _real_run(session: ServingSession, images: pathlib.Path, styles: list[str], **options) -> dict:
    inputs = {
        "content": (images / "content" / "tubingen.jpg").read_bytes(),
        "style": [(images / "style" / s).read_bytes() for s in styles],
        "max_dim": 96,
        "steps": 60,
        **options,
    }
    return session.run("serving_default", {k: feed(k, v) for k, v in inputs.items()})


def test_real_preserve_colors_keeps_chroma_and_style(real_serving):
    session, images = real_serving
    content = yuv(_real_run(session, images, ["starry_night.jpg"], steps=0)["image_bytes"])
    plain = yuv(_real_run(session, images, ["starry_night.jpg"])["image_bytes"])
    kept = yuv(_real_run(session, images, ["starry_night.jpg"], preserve_colors=True)["image_bytes"])
    assert np.abs(plain[..., 1:] - content[..., 1:]).mean() > 4 * np.abs(kept[..., 1:] - content[..., 1:]).mean()
    assert np.abs(kept[..., 1:] - content[..., 1:]).mean() < 0.01
    assert np.corrcoef(kept[..., 0].ravel(), plain[..., 0].ravel())[0, 1] > 0.98


def test_real_blend_moves_towards_the_heavier_style(real_serving):
    """A 7:3 blend of Starry Night and The Scream ends closer to Starry Night's Gram matrices
    than a 3:7 blend does, measured by each result's style loss against Starry Night alone."""
    session, images = real_serving
    styles = ["starry_night.jpg", "the_scream.jpg"]

    def loss_against_starry(png: bytes) -> float:
        feeds = {"content": png, "style": (images / "style" / styles[0]).read_bytes(), "steps": 0, "max_dim": 96}
        return float(session.run("serving_default", {k: feed(k, v) for k, v in feeds.items()})["style_loss"])

    # The result PNG is the content of a zero-step run: its style loss is measured on the result.
    heavy = loss_against_starry(_real_run(session, images, styles, style_weights=[7.0, 3.0])["image_bytes"])
    light = loss_against_starry(_real_run(session, images, styles, style_weights=[3.0, 7.0])["image_bytes"])
    assert heavy < light


def test_real_noise_init_reaches_a_styled_image_and_seeds_differ(real_serving):
    session, images = real_serving
    runs = [_real_run(session, images, ["starry_night.jpg"], init="noise", seed=s, steps=100) for s in (1, 2)]
    start = _real_run(session, images, ["starry_night.jpg"], init="noise", seed=1, steps=0)
    assert runs[0]["image_bytes"] != runs[1]["image_bytes"]
    for run in runs:
        assert float(run["loss"]) < float(start["loss"]) / 5


def test_real_colour_methods_keep_the_contents_chroma(real_serving):
    """Measured against the plain run: both methods end nearer the content's colours than it does."""
    session, images = real_serving
    content = yuv(_real_run(session, images, ["starry_night.jpg"], steps=0)["image_bytes"])[..., 1:]

    def drift(**options: object) -> float:
        return float(
            np.abs(
                yuv(_real_run(session, images, ["starry_night.jpg"], **options)["image_bytes"])[..., 1:] - content
            ).mean()
        )

    plain = drift()
    assert drift(colors="luminance") < 0.01 < plain  # the content's own chroma, up to rounding
    assert drift(colors="histogram") < 0.9 * plain  # measured 0.82x at 96 px
