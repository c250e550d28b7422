"""Region masks (Gatys et al. 2017): guided Gram matrices against numpy, the regions a mask makes,
each region moving toward its own style, "keep the photo" regions, chunked == one call, and
every bad mask refused with its one line; checked the server's way with random weights."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import tensorflow as tf
from helpers import BASE, CONTENT, STYLE_A, STYLE_B, decode, feed, png_bytes, random_weights, rgb

from nst_client import flags
from nst_model import losses, masks, runner
from nst_model.options import KEEP_PHOTO, MAX_REGIONS, STYLE_LAYERS
from nst_model.vgg import VGG19

CONTENT_SHAPE = (28, 40)  # helpers.CONTENT (40 x 56) at BASE's max_dim


def mask_png(labels: np.ndarray, colours: list[tuple[int, int, int]]) -> bytes:
    """A PNG painting region label i of `labels` [H, W] in colours[i]."""
    return png_bytes(np.asarray(colours, np.float32)[labels] / 255.0)


def halves(height: int = 14, width: int = 20) -> np.ndarray:
    """Labels: 0 on the left half, 1 on the right."""
    labels = np.zeros((height, width), int)
    labels[:, width // 2 :] = 1
    return labels


LEFT_RIGHT = mask_png(halves(), [(0, 0, 0), (255, 255, 255)])  # black left, white right
SQUARE = mask_png(halves(20, 20), [(0, 0, 0), (255, 255, 255)])  # for a content of 28 x 40


def run(serving, **inputs) -> dict:
    inputs = {"content": CONTENT, "style": [STYLE_A, STYLE_B], **BASE, **inputs}
    return serving.run("serving_default", {k: feed(k, v) for k, v in inputs.items()})


# ---- the pieces, against numpy -------------------------------------------------------------------


def test_guided_gram_equals_a_direct_computation():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1, 6, 7, 5)).astype(np.float32)
    guides = rng.uniform(size=(3, 6, 7, 1)).astype(np.float32)
    guides[2] = 0.0  # a region with no area here
    got = losses.guided_gram(tf.constant(features), tf.constant(guides)).numpy()
    for r in range(2):
        weighted = (features[0] * guides[r]).reshape(-1, 5)
        expected = weighted.T @ weighted / np.sum(guides[r] ** 2)
        np.testing.assert_allclose(got[r], expected, rtol=1e-5)
    np.testing.assert_array_equal(got[2], 0.0)
    ones = np.ones((1, 6, 7, 1), np.float32)  # one region covering all: the plain Gram matrix
    np.testing.assert_allclose(
        losses.guided_gram(tf.constant(features), tf.constant(ones)).numpy(), losses.gram(features).numpy(), rtol=1e-6
    )
    targets = rng.normal(size=(3, 5, 5)).astype(np.float32)
    terms = losses.guided_gram_terms(tf.constant(features), tf.constant(guides), tf.constant(targets)).numpy()
    np.testing.assert_allclose(terms[:2], np.mean((got[:2] - targets[:2]) ** 2, axis=(1, 2)), rtol=1e-5)
    assert terms[2] == 0.0  # nothing to match where the region has no area


def test_regions_are_ordered_by_colour_and_sized_to_the_content():
    labels = np.zeros((10, 14), int)
    labels[:, 5:] = 1
    labels[6:, 9:] = 2
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]  # by value: blue < green < red
    content = tf.zeros([1, 20, 28, 3])
    one_hot = masks.regions(tf.constant(mask_png(labels, colours)), content).numpy()
    assert one_hot.shape == (1, 20, 28, 3)
    order = {(0, 0, 255): 0, (0, 255, 0): 1, (255, 0, 0): 2}
    expected = np.vectorize(lambda i: order[colours[i]])(labels).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(one_hot[0].argmax(-1), expected)
    np.testing.assert_array_equal(one_hot.sum(-1), 1.0)


def test_a_region_too_small_for_the_content_keeps_its_place():
    labels = np.zeros((80, 112), int)
    labels[0, 0] = 1  # one pixel: gone once the mask shrinks to 20 x 28
    labels[:, 56:] = 2
    mask = mask_png(labels, [(0, 0, 0), (9, 9, 9), (99, 99, 99)])
    one_hot = masks.regions(tf.constant(mask), tf.zeros([1, 20, 28, 3]))
    assert one_hot.shape[-1] == 3
    assert one_hot.numpy()[..., 1].sum() == 0 and one_hot.numpy()[..., 2].sum() == 20 * 14


def test_layer_guides_have_each_style_layers_size_and_skip_kept_regions():
    content = tf.zeros([1, *CONTENT_SHAPE, 3])
    one_hot = masks.regions(tf.constant(LEFT_RIGHT), content)
    guides = masks.layer_guides(one_hot, tf.constant([KEEP_PHOTO, 0]))
    features = VGG19(random_weights())(content, STYLE_LAYERS)
    for guide, layer in zip(guides, STYLE_LAYERS, strict=True):
        assert guide.shape[0] == 1 and guide.shape[1:3] == features[layer].shape[1:3], layer
        # The styled right half; pooling blends the border, the more the deeper the layer.
        assert np.all(guide.numpy()[0, :, -1] > 0.5) and np.all(guide.numpy()[0, :, 0] < 0.5), layer
    np.testing.assert_array_equal(guides[0].numpy()[0, :, : CONTENT_SHAPE[1] // 2], 0.0)
    np.testing.assert_array_equal(guides[0].numpy()[0, :, CONTENT_SHAPE[1] // 2 :], 1.0)


def test_mask_styles_flag_reads_a_dash_as_keep_the_photo():
    parser = argparse.ArgumentParser()
    flags.add_mask_flags(parser)
    args = parser.parse_args(["--mask", "m.png", "--mask-styles", "1,-,0"])
    assert (args.mask, args.mask_styles) == ("m.png", (1, KEEP_PHOTO, 0))
    assert flags.KEEP_PHOTO == KEEP_PHOTO  # the client's copy of the model's value


# ---- what a masked run does (random weights, the exported model) ----------------------------------


def guided_distances(png: bytes, labels: np.ndarray, styles: list[bytes], serving) -> np.ndarray:
    """[region, style]: the mean squared difference, over the style layers, between the image's
    guided Gram matrix in the region and the style's Gram matrix, computed here apart from the graph."""
    vgg = VGG19(random_weights())
    image = tf.constant(rgb(png)[np.newaxis])
    one_hot = masks.regions(tf.constant(mask_png(labels, [(0, 0, 0), (255, 255, 255)])), image)
    guides = masks.layer_guides(one_hot, tf.constant([0, 1]))
    features = vgg(image, STYLE_LAYERS)
    targets = [vgg(tf.constant(decode(serving, s)), STYLE_LAYERS) for s in styles]
    out = np.zeros((2, len(styles)))
    for k, layer in enumerate(STYLE_LAYERS):
        guided = losses.guided_gram(features[layer], guides[k]).numpy()
        for s, target in enumerate(targets):
            out[:, s] += np.mean((guided - losses.gram(target[layer]).numpy()) ** 2, axis=(1, 2)) / len(STYLE_LAYERS)
    return out


def test_each_region_moves_toward_its_own_style(serving):
    """Painted left A / right B, then left B / right A: each region ends nearer the style that
    painted it than the same region painted by the other, and nearer it than it started."""
    styles = [STYLE_A, STYLE_B]
    before = guided_distances(CONTENT, halves(), styles, serving)
    ab = guided_distances(
        run(serving, mask=LEFT_RIGHT, mask_styles=[0, 1], steps=8)["image_bytes"], halves(), styles, serving
    )
    ba = guided_distances(
        run(serving, mask=LEFT_RIGHT, mask_styles=[1, 0], steps=8)["image_bytes"], halves(), styles, serving
    )
    assert ab[0, 0] < ba[0, 0] and ab[1, 1] < ba[1, 1]  # [region, style]
    assert ba[0, 1] < ab[0, 1] and ba[1, 0] < ab[1, 0]
    assert ab[0, 0] < before[0, 0] and ab[1, 1] < before[1, 1]


def test_kept_region_stays_closer_to_the_photo_than_unmasked(serving):
    content = rgb(run(serving, steps=0)["image_bytes"])
    masked = rgb(run(serving, mask=LEFT_RIGHT, mask_styles=[KEEP_PHOTO, 0], steps=8)["image_bytes"])
    plain = rgb(run(serving, style=STYLE_A, steps=8)["image_bytes"])
    left = slice(0, CONTENT_SHAPE[1] // 2 - 4)  # away from the border, where the styled half blends in
    kept = np.abs(masked[:, left] - content[:, left]).mean()
    # At 40 px the deep layers see the whole image, so the styled half still reaches into the kept one.
    assert kept < 0.8 * np.abs(plain[:, left] - content[:, left]).mean()


def test_one_region_for_the_whole_image_is_the_unmasked_objective(serving):
    whole = mask_png(np.zeros((14, 20), int), [(7, 7, 7)])
    masked = run(serving, style=STYLE_A, mask=whole, steps=2)
    plain = run(serving, style=STYLE_A, steps=2)
    for name in ("loss", "style_loss", "content_loss", "tv_loss"):
        np.testing.assert_allclose(masked[name], plain[name], rtol=1e-4, err_msg=name)


def test_all_regions_kept_has_no_style_term(serving):
    out = run(serving, mask=LEFT_RIGHT, mask_styles=[KEEP_PHOTO, KEEP_PHOTO], steps=1)
    assert out["style_loss"] == 0.0 and out["content_loss"] >= 0.0


def test_chunked_masked_run_equals_one_call(serving):
    stylizer = runner.over_session(serving)
    options = {"steps": 6, "max_dim": 40, "mask": LEFT_RIGHT, "mask_styles": (1, KEEP_PHOTO)}
    one = stylizer.run(CONTENT, [STYLE_A, STYLE_B], chunk=0, progress=False, **options)
    chunked = stylizer.run(CONTENT, [STYLE_A, STYLE_B], chunk=2, progress=False, **options)
    assert chunked.png == one.png
    plain = stylizer.run(CONTENT, [STYLE_A, STYLE_B], chunk=0, progress=False, steps=6, max_dim=40)
    assert plain.png != one.png


# ---- refused, each with its line --------------------------------------------------------------------


def many_colours(count: int) -> bytes:
    labels = np.arange(14 * 20).reshape(14, 20) % count
    return mask_png(labels, [(i, i, i) for i in range(count)])


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"mask": many_colours(MAX_REGIONS + 1)}, f"mask has more than {MAX_REGIONS} regions"),
        ({"mask": SQUARE}, "mask must have the aspect ratio of the content"),
        ({"mask": LEFT_RIGHT, "mask_styles": [0]}, "mask_styles must give one style index per mask region"),
        ({"mask": LEFT_RIGHT, "mask_styles": [0, 2]}, "mask_styles must be -1 (keep the photo) or the index"),
        ({"mask": LEFT_RIGHT, "mask_styles": [-2, 0]}, "mask_styles must be -1"),
        ({"mask": many_colours(3)}, "mask_styles must be -1"),  # region 2 would take a third style
        ({"mask_styles": [0, 1]}, "mask_styles needs a mask"),
        ({"mask": LEFT_RIGHT, "style_weights": [1.0, 2.0]}, "leave style_weights out"),
        ({"mask": b"not an image"}, "mask is not a JPEG, PNG, GIF or BMP image"),
    ],
)
def test_bad_mask_is_invalid_argument_naming_it(serving, inputs, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(serving, **inputs)


# ---- real weights ---------------------------------------------------------------------------------


def test_real_regions_take_their_own_styles_colours(real_serving):
    """Tübingen, its left half painted by Starry Night (blue) and its right by The Scream (orange),
    then the other way round: each half's blue-minus-red follows the style painting it."""
    session, images = real_serving
    inputs = {
        "content": (images / "content" / "tubingen.jpg").read_bytes(),
        "style": [(images / "style" / name).read_bytes() for name in ("starry_night.jpg", "the_scream.jpg")],
        "mask": mask_png(halves(12, 16), [(0, 0, 0), (255, 255, 255)]),  # the photo's 3:4
        "max_dim": 96,
        "steps": 60,
    }

    def blue_minus_red(mask_styles: list[int]) -> np.ndarray:
        out = session.run("serving_default", {k: feed(k, v) for k, v in {**inputs, "mask_styles": mask_styles}.items()})
        image = rgb(out["image_bytes"])
        return np.array([(image[:, half, 2] - image[:, half, 0]).mean() for half in (slice(0, 44), slice(52, 96))])

    starry_left, scream_left = blue_minus_red([0, 1]), blue_minus_red([1, 0])
    assert starry_left[0] > scream_left[0] + 0.05  # the left half is bluer under Starry Night
    assert scream_left[1] > starry_left[1] + 0.05  # and the right half too, when it is its turn
