"""Hostile and odd images through serving_default, run the server's way: only OK or INVALID_ARGUMENT."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
from helpers import make_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nst_model.options import MAX_SIDE

SMALL = {"steps": np.int32(0), "max_dim": np.int32(32)}


def encoded(image: PIL.Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def outcome(serving, content: bytes, style: bytes, **feeds) -> str:
    """'ok' or 'invalid'; any other error (or a crash of the process) fails the test."""
    inputs = {"content": np.array(content, object), "style": np.array(style, object), **SMALL, **feeds}
    try:
        out = serving.run("serving_default", inputs)
    except tf.errors.InvalidArgumentError:
        return "invalid"
    assert out["image_bytes"].startswith(b"\x89PNG")
    return "ok"


RGB = (make_image(24, 32) * 255).astype(np.uint8)
VALID = {
    "png": encoded(PIL.Image.fromarray(RGB), "PNG"),
    "jpeg": encoded(PIL.Image.fromarray(RGB), "JPEG"),
    "gif": encoded(PIL.Image.fromarray(RGB).convert("P"), "GIF"),
    "bmp": encoded(PIL.Image.fromarray(RGB), "BMP"),
}


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("1 channel", encoded(PIL.Image.fromarray(RGB).convert("L"), "PNG"), "ok"),
        ("2 channels", encoded(PIL.Image.fromarray(RGB).convert("LA"), "PNG"), "ok"),
        ("4 channels", encoded(PIL.Image.fromarray(RGB).convert("RGBA"), "PNG"), "ok"),
        ("16-bit grey PNG", encoded(PIL.Image.fromarray(RGB[..., 0].astype(np.uint16) * 257), "PNG"), "ok"),
        ("1x1 image", encoded(PIL.Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "ok"),
        ("4000x2 image", encoded(PIL.Image.new("RGB", (4000, 2)), "PNG"), "invalid"),
        ("empty", b"", "invalid"),
        ("truncated JPEG", VALID["jpeg"][: len(VALID["jpeg"]) // 2], "invalid"),
        ("only a PNG signature", b"\x89PNG\r\n\x1a\n", "invalid"),
        ("HTML", b"<!doctype html><html></html>", "invalid"),
    ],
)
def test_odd_images(serving, name, data, expected):
    assert outcome(serving, data, VALID["png"]) == expected, name
    assert outcome(serving, VALID["png"], VALID["png"]) == "ok"


def test_animated_gif_gives_its_first_frame(serving):
    frames = [PIL.Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    pixels = serving.run("decode", {"image": np.array(gif, object), "max_dim": np.int32(20)})["pixels"]
    np.testing.assert_allclose(pixels[0].mean(axis=(0, 1)), [1, 0, 0], atol=0.02)


def test_largest_max_dim_is_accepted_and_one_more_is_not(serving):
    def run(max_dim):
        return outcome(serving, VALID["png"], VALID["png"], max_dim=np.int32(max_dim))

    assert run(MAX_SIDE + 1) == "invalid"
    assert run(64) == "ok"


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=512))
def test_fuzz_random_bytes(serving, data):
    assert outcome(serving, data, VALID["png"]) in ("ok", "invalid")


@pytest.mark.slow
@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    kind=st.sampled_from(sorted(VALID)),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 10_000),
)
def test_fuzz_mutated_images(serving, kind, edits, cut):
    """Valid images with bytes overwritten (headers included) and cut short."""
    data = bytearray(VALID[kind])
    for position, value in edits:
        data[position % len(data)] = value
    data = bytes(data[: max(cut, 8)])
    assert outcome(serving, VALID["jpeg"], data) in ("ok", "invalid")
