"""The exported model, run the server's way: equivalence with the reference, resumability, errors."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
from helpers import make_image, png_bytes
from reference import Reference

from nst_model.options import BY_NAME, DEFAULTS
from nst_model.session import ServingSession

STEPS = 10
ADAM = np.array(b"adam", object)  # the reference's optimiser (the default is L-BFGS)
REFERENCE = np.array(b"reference", object)  # the reference's style balance (the default is normalized)


def run_default(serving: ServingSession, content: bytes, style: bytes, **feeds) -> dict:
    inputs = {"content": np.array(content, object), "style": np.array(style, object)}
    for name, value in feeds.items():
        dtype = object if isinstance(value, str) else np.int32 if name in ("steps", "max_dim") else np.float32
        inputs[name] = np.array(value, dtype)
    return serving.run("serving_default", inputs)


def decode(serving: ServingSession, png: bytes, max_dim: int) -> np.ndarray:
    return serving.run("decode", {"image": np.array(png, object), "max_dim": np.int32(max_dim)})["pixels"]


@pytest.mark.slow
def test_session_and_tf2_loader_give_the_same_png(serving, exported, content_png, style_png):
    by_session = run_default(serving, content_png, style_png, steps=3, max_dim=48)
    signature = tf.saved_model.load(str(exported)).signatures["serving_default"]
    # The TF2 loader's signature functions ignore the SignatureDef's defaults: every input is passed.
    options = {
        name: tf.constant(value, BY_NAME[name].dtype) for name, value in {**DEFAULTS, "steps": 3, "max_dim": 48}.items()
    }
    by_tf2 = signature(content=tf.constant(content_png), style=tf.constant(style_png), mask=tf.constant(""), **options)
    assert by_tf2["image_bytes"].numpy() == by_session["image_bytes"]
    assert float(by_tf2["loss"]) == pytest.approx(float(by_session["loss"]), rel=1e-6)


@pytest.mark.slow
def test_each_step_matches_the_reference_tutorial_loop(serving, weights_file, content_png, style_png):
    """Keras VGG19 + tf.keras.optimizers.Adam (the tutorial) and the SavedModel take the same steps.

    Each of 10 steps starts the SavedModel from the reference's own image and Adam moments (the
    resumable state inputs) and must land on the reference's next image to 1e-5 but for a rare
    pixel, within 1e-4 (the image moves ~0.02 a step). Gradients agree to ~1e-7 relative, but ReLU
    and max-pool switches amplify such rounding over free-running steps, so a free run is compared
    on its losses instead (below).
    """
    content, style = decode(serving, content_png, 64), decode(serving, style_png, 64)
    reference = Reference(weights_file, content, style)
    feeds = {"content": content, "style": style, "steps": np.int32(1), "optimizer": ADAM, "style_balance": REFERENCE}
    for _ in range(STEPS):
        image = reference.image.numpy()
        if int(reference.opt.iterations) == 0:
            state = {}  # the default state: start from the content image
        else:
            m, v, step = reference.adam_state()
            state = {"image": image, "adam_m": m, "adam_v": v, "adam_step": np.int32(step)}
        out = serving.run("pixels", {**feeds, **state})
        reference.step()
        difference = np.abs(out["image"] - reference.image.numpy())
        # 1e-5 everywhere but a rare pixel: on some CPUs (AVX2 without AVX-512, seen on an AMD EPYC)
        # oneDNN's convolutions round differently, and Adam's division by sqrt(v) + 0.1 lifts that
        # to 2e-5 at one pixel in 8640 in a step (the code before this state redesign did the same).
        assert difference.max() < 1e-4 and np.mean(difference > 1e-5) < 1e-3, difference.max()
        np.testing.assert_allclose(out["adam_m"], reference.adam_state()[0], rtol=1e-4, atol=1e-3)
    assert np.abs(reference.image.numpy() - content).max() > 0.05  # it did move
    losses = reference.loss(reference.image)
    out = serving.run("pixels", {**feeds, **state, "steps": np.int32(0), "image": reference.image.numpy()})
    for name, value in zip(("loss", "style_loss", "content_loss", "tv_loss"), losses, strict=True):
        assert float(out[name]) == pytest.approx(float(value), rel=1e-5), name


@pytest.mark.slow
def test_free_run_matches_the_reference_losses(serving, weights_file, content_png, style_png):
    content, style = decode(serving, content_png, 64), decode(serving, style_png, 64)
    reference = Reference(weights_file, content, style)
    expected = [float(x) for x in reference.loss(tf.constant(reference.run(STEPS)))]
    out = serving.run(
        "pixels",
        {"content": content, "style": style, "steps": np.int32(STEPS), "optimizer": ADAM, "style_balance": REFERENCE},
    )
    got = [float(out[k]) for k in ("loss", "style_loss", "content_loss", "tv_loss")]
    np.testing.assert_allclose(got, expected, rtol=0.02)
    assert expected[0] < 0.95 * float(reference.loss(tf.constant(content))[0])


def test_chunked_adam_runs_equal_one_long_run(serving, content_png, style_png):
    content, style = decode(serving, content_png, 48), decode(serving, style_png, 48)
    feeds = {"content": content, "style": style, "optimizer": ADAM}
    whole = serving.run("pixels", {**feeds, "steps": np.int32(6)})
    state = {}
    for _ in range(3):
        out = serving.run("pixels", {**feeds, **state, "steps": np.int32(2)})
        state = {k: out[k] for k in ("image", "adam_m", "adam_v", "adam_step")}
    assert out["adam_step"] == whole["adam_step"] == 6
    np.testing.assert_allclose(out["image"], whole["image"], atol=1e-6)
    assert out["image_bytes"] == whole["image_bytes"]


def test_pixels_equals_serving_default(serving, content_png, style_png):
    """decode + pixels (what chunking clients call) reproduce serving_default byte for byte."""
    single = run_default(serving, content_png, style_png, steps=4, max_dim=40)
    out = serving.run(
        "pixels",
        {"content": decode(serving, content_png, 40), "style": decode(serving, style_png, 40), "steps": np.int32(4)},
    )
    assert out["image_bytes"] == single["image_bytes"]


def test_loss_decreases_and_png_has_the_resized_size(serving, content_png, style_png):
    losses = [float(run_default(serving, content_png, style_png, steps=s, max_dim=64)["loss"]) for s in (0, 10, 30)]
    assert losses[0] > losses[1] > losses[2]
    png = run_default(serving, content_png, style_png, steps=1, max_dim=64)["image_bytes"]
    assert PIL.Image.open(io.BytesIO(png)).size == (64, 45)  # 56x40 scaled to a longest side of 64


def test_zero_steps_returns_the_content(serving, content_png, style_png):
    out = run_default(serving, content_png, style_png, steps=0, max_dim=56)
    assert out["content_loss"] == 0.0
    assert out["image_bytes"] == png_bytes(decode(serving, content_png, 56)[0])


def test_decode_handles_grey_alpha_gif_bmp_and_16_bit(serving):
    rgb = (make_image(20, 30) * 255).astype(np.uint8)
    variants = {}
    for mode, fmt in (("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("RGB", "BMP"), ("P", "GIF"), ("RGB", "JPEG")):
        buffer = io.BytesIO()
        PIL.Image.fromarray(rgb).convert(mode).save(buffer, format=fmt)
        variants[f"{mode}/{fmt}"] = buffer.getvalue()
    for name, data in variants.items():
        pixels = decode(serving, data, 30)
        assert pixels.shape == (1, 20, 30, 3), name
        assert pixels.min() >= 0.0 and pixels.max() <= 1.0, name
    # RGBA drops alpha, keeping the colours exactly.
    np.testing.assert_allclose(decode(serving, variants["RGBA/PNG"], 30)[0], rgb / 255.0, atol=1e-6)
    sixteen = tf.io.encode_png((make_image(20, 30) * 65535).astype(np.uint16)).numpy()
    np.testing.assert_allclose(decode(serving, sixteen, 30)[0], make_image(20, 30), atol=1e-4)


def test_header_sizes_are_read_without_decoding():
    from nst_model.decoders import declared_size

    rgb = (make_image(23, 37) * 255).astype(np.uint8)
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        buffer = io.BytesIO()
        PIL.Image.fromarray(rgb).save(buffer, format=fmt)
        assert declared_size(tf.constant(buffer.getvalue())).numpy().tolist() == [23, 37], fmt
    top_down_bmp = bytearray(buffer.getvalue())
    top_down_bmp[22:26] = struct.pack("<i", -23)
    assert declared_size(tf.constant(bytes(top_down_bmp))).numpy().tolist() == [23, 37]
    assert declared_size(tf.constant(png_declaring(100_000, 7))).numpy().tolist() == [7, 100_000]
    assert declared_size(tf.constant(b"\x89PNG")).numpy().tolist() == [0, 0]


def _bad_default_inputs(content_png: bytes) -> dict[str, dict]:
    good = {
        "content": np.array(content_png, object),
        "style": np.array(content_png, object),
        "steps": np.int32(1),
        "max_dim": np.int32(32),
    }
    return {
        "undecodable bytes": {**good, "content": np.array(b"definitely not an image", object)},
        "empty bytes": {**good, "style": np.array(b"", object)},
        "truncated png": {**good, "content": np.array(content_png[: len(content_png) // 2], object)},
        "content is a vector": {**good, "content": np.array([content_png, content_png], object)},
        "negative steps": {**good, "steps": np.int32(-1)},
        "steps above the cap": {**good, "steps": np.int32(10_001)},
        "steps as int64": {**good, "steps": np.int64(1)},
        "max_dim too small": {**good, "max_dim": np.int32(8)},
        "max_dim too large": {**good, "max_dim": np.int32(100_000)},
        "NaN style weight": {**good, "style_weight": np.float32("nan")},
        "infinite tv weight": {**good, "tv_weight": np.float32("inf")},
        "negative content weight": {**good, "content_weight": np.float32(-1)},
        "zero learning rate": {**good, "learning_rate": np.float32(0)},
        "thin image": {**good, "content": np.array(png_bytes(make_image(2, 400)), object)},
        "decompression bomb": {**good, "style": np.array(png_declaring(100_000, 100_000), object)},
    }


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bad_pixel_inputs() -> dict[str, dict]:
    image = make_image(24, 32)[np.newaxis]
    good = {"content": image, "style": image, "steps": np.int32(1)}
    return {
        "rank 3 content": {**good, "content": image[0]},
        "4 channels": {**good, "style": np.concatenate([image, image[..., :1]], -1)},
        "batch of 2": {**good, "content": np.concatenate([image, image])},
        "float64 pixels": {**good, "content": image.astype(np.float64)},
        "NaN pixel": {**good, "content": np.where(image > 0.9, np.nan, image).astype(np.float32)},
        "values above 1": {**good, "style": image * 2},
        "empty image": {**good, "content": np.zeros([1, 0, 0, 3], np.float32)},
        "state of another shape": {**good, "image": image[:, :20]},
        "infinite adam_v": {**good, "adam_v": np.full_like(image, np.inf)},
        "negative adam_step": {**good, "adam_step": np.int32(-3)},
    }


@pytest.mark.parametrize("case", sorted(_bad_default_inputs(b"")))
def test_bad_request_is_invalid_argument_and_next_request_works(serving, content_png, style_png, case):
    with pytest.raises(tf.errors.InvalidArgumentError):
        serving.run("serving_default", _bad_default_inputs(content_png)[case])
    assert run_default(serving, content_png, style_png, steps=1, max_dim=32)["image_bytes"].startswith(b"\x89PNG")


@pytest.mark.parametrize("case", sorted(_bad_pixel_inputs()))
def test_bad_pixels_are_invalid_argument_and_next_request_works(serving, case):
    with pytest.raises(tf.errors.InvalidArgumentError):
        serving.run("pixels", _bad_pixel_inputs()[case])
    image = make_image(24, 32)[np.newaxis]
    assert serving.run("pixels", {"content": image, "style": image, "steps": np.int32(1)}, ["loss"])["loss"] > 0


def test_error_messages_name_the_input_and_the_limit(serving, content_png):
    cases = _bad_default_inputs(content_png)
    for case, expected in (
        ("negative steps", "steps must be between 0 and 10000"),
        ("undecodable bytes", "content is not a JPEG, PNG, GIF or BMP image"),
        ("max_dim too small", "max_dim must be between 16 and 2048"),
        ("NaN style weight", "style_weight must be a finite number"),
        ("thin image", "content sides must be between 16 and 2048 px after resizing"),
        ("decompression bomb", "style declares more than 50000000 pixels"),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
            serving.run("serving_default", cases[case])


def _low_frequency_luma(png: bytes) -> np.ndarray:
    image = tf.image.rgb_to_grayscale(tf.image.decode_png(png)[tf.newaxis])
    return tf.image.resize(tf.cast(image, tf.float32), [12, 16], antialias=True).numpy().ravel()


def test_real_weights_transfer_style_and_keep_content(real_serving):
    """ImageNet VGG19, a photo and a painting, 50 steps at 128 px: each balance cuts its own style term
    (measured: reference 44x, normalized 5.2x, where the content term pulls back sooner) and keeps the
    scene (its coarse brightness layout correlates with the photo's; measured 0.98 for both)."""
    serving, images = real_serving
    content = (images / "content" / "tubingen.jpg").read_bytes()
    style = (images / "style" / "starry_night.jpg").read_bytes()
    runs = {
        b: [run_default(serving, content, style, steps=n, max_dim=128, style_balance=b) for n in (0, 50)]
        for b in ("reference", "normalized")
    }
    for balance, least_cut in (("reference", 10), ("normalized", 4)):
        start, end = runs[balance]
        assert float(end["style_loss"]) < float(start["style_loss"]) / least_cut, balance
        assert float(end["content_loss"]) < float(start["style_loss"]) / least_cut, balance
        luma = _low_frequency_luma(end["image_bytes"]), _low_frequency_luma(start["image_bytes"])
        assert np.corrcoef(*luma)[0, 1] > 0.7, balance
