"""Hostile and odd images through serving_default, run the server's way: only OK or INVALID_ARGUMENT."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
from helpers import make_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nst_model.options import MAX_SIDE, STYLE_SCALE_RANGE

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


# In a child process, so that its peak memory is the request's alone: the model loaded the server's way, one
# accepted call to prepare each signature's executor, the peak reset, then the refused call, timed.
REFUSED_REQUEST = """
import json, pathlib, re, sys, time
import numpy as np
import tensorflow as tf
from nst_model.session import ServingSession

def peak_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", pathlib.Path("/proc/self/status").read_text())[1])

serving = ServingSession(sys.argv[1])
tiny = tf.io.encode_png(tf.fill([16, 20, 3], tf.constant(90, tf.uint8))).numpy()
encoded = {"content": np.array(tiny, object), "style": np.array(tiny, object), "steps": np.int32(0)}
pixels = {"content": np.full([1, 1638, 2048, 3], 0.4, np.float32), "style": np.full([1, 16, 20, 3], 0.4, np.float32)}
pixels["steps"] = np.int32(0)
calls = {
    "serving_default": (encoded, {"max_dim": np.int32(32)}, {"max_dim": np.int32(2048)}),
    "pixels": ({**pixels, "content": pixels["content"][:, :25, :32]}, {}, {}),
}
report = {}
for signature, (feeds, accepted, refused) in calls.items():
    serving.run(signature, {**feeds, **accepted})
    if signature == "pixels":
        feeds = pixels
    scale = {"style_scale": np.float32(sys.argv[2])}
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    before, start = peak_kib(), time.monotonic()
    try:
        serving.run(signature, {**feeds, **refused, **scale})
        message = "accepted"
    except tf.errors.InvalidArgumentError as error:
        message = error.message
    seconds, peak_mib = time.monotonic() - start, (peak_kib() - before) / 1024
    report[signature] = {"seconds": seconds, "peak_mib": peak_mib, "message": message}
print(json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_refused_request_costs_no_decode_resize_or_vgg_pass(exported):
    """A 20x16 content at max_dim 2048 with style_scale 8 (a style of 16384 px, refused): the content's
    decode, resize and VGG pass at 2048 px used to run beside the style's size check (18.7 s, +2.4 GB with
    the real weights); every check now gates them. The same for pixels, the content fed at 2048 px."""
    command = [sys.executable, "-c", REFUSED_REQUEST, str(exported), str(STYLE_SCALE_RANGE[1])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=True)
    report = json.loads(done.stdout.splitlines()[-1])
    for signature, outcome in report.items():
        assert "style sides must be between 16 and 2048 px after scaling by style_scale" in outcome["message"]
        assert outcome["seconds"] < 1.0, (signature, outcome)
        assert outcome["peak_mib"] < 100, (signature, outcome)  # one 2048 px VGG layer alone is 800 MiB
