"""Hostile images through `decoders.decode`, run the server's way in a child process.

TensorFlow's own BMP decoder kills the process on some layouts, so every case goes through a tiny
SavedModel loaded by a TF1 Session (`ServingSession`) in a child: a crash fails the test instead of
killing pytest. Each case must come back OK with Pillow's colours (to 1/255) or the same floats as
`tf.io.decode_image`, or INVALID_ARGUMENT with the expected message; then a good image still works.
All images are built here: BMP headers with `struct`, GIF blocks and LZW data by hand, JPEG scans
cut out of Pillow's progressive files.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nst_model import decoders
from nst_model.options import MAX_BLOCKS_WALKED, MAX_INPUT_PIXELS, MAX_JPEG_SCAN_PIXELS
from nst_model.session import ServingSession

RNG = np.random.default_rng(14)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # odd sizes: BMP rows need padding
PALETTE = [tuple(int(v) for v in RNG.integers(0, 256, 3)) for _ in range(256)]


def encoded(image: PIL.Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


# BMP: rows top to bottom, unpadded; `bmp` pads them and stores them bottom-up unless top_down.
def indices_rows(indices: np.ndarray, bits: int) -> list[bytes]:
    per_byte = 8 // bits
    padded = np.pad(indices.astype(np.uint8), ((0, 0), (0, -indices.shape[1] % per_byte)))
    packed = sum(padded[:, k::per_byte] << (8 - bits * (k + 1)) for k in range(per_byte))
    return [bytes(row.astype(np.uint8)) for row in packed]


def masked_rows(rgb: np.ndarray, bits: int, masks: tuple[int, ...]) -> list[bytes]:
    value = np.zeros(rgb.shape[:2], np.uint64)
    for channel, mask in enumerate(masks[:3]):
        shift = (mask & -mask).bit_length() - 1
        top = mask >> shift
        value |= ((rgb[..., channel].astype(np.uint64) * top + 127) // 255) << np.uint64(shift)
    if len(masks) > 3:
        value |= np.uint64(masks[3])  # opaque alpha
    return [row.astype(f"<u{bits // 8}").tobytes() for row in value]


def bgr_rows(rgb: np.ndarray, pad: int = 0) -> list[bytes]:
    pixels = np.concatenate([rgb[..., ::-1], np.zeros((*rgb.shape[:2], pad), np.uint8)], -1)
    return [row.tobytes() for row in pixels]


def bmp(
    width: int,
    height: int,
    bits: int,
    rows: list[bytes] | None,
    *,
    top_down: bool = False,
    header: int = 40,
    compression: int = 0,
    palette: list[tuple[int, int, int]] | None = None,
    masks: tuple[int, ...] | None = None,
    colours: int = 0,
    data: bytes | None = None,
    offset: int | None = None,
) -> bytes:
    if data is None:
        data = b"".join(row + b"\0" * (-len(row) % 4) for row in (rows if top_down else rows[::-1]))
    palette = palette or []
    if header == 12:  # OS/2 1.x: 16-bit sides, BGR palette entries
        dib = struct.pack("<IHHHH", 12, width, height, 1, bits)
        table = b"".join(bytes((b, g, r)) for r, g, b in palette)
    else:
        dib = struct.pack(
            "<IiiHHIIiiII",
            header,
            width,
            -height if top_down else height,
            1,
            bits,
            compression,
            len(data),
            2835,
            2835,
            colours,
            0,
        )
        if header >= 52:
            dib += struct.pack("<4I", *(list(masks or ()) + [0] * 4)[:4])[: 12 if header == 52 else 16]
        elif masks:
            dib += struct.pack(f"<{len(masks)}I", *masks)  # after a 40-byte header
        dib += b"\0" * (header - len(dib)) if header > len(dib) else b""
        table = b"".join(bytes((b, g, r, 0)) for r, g, b in palette)
    start = 14 + len(dib) + len(table) if offset is None else offset
    body = (dib + table).ljust(start - 14, b"\0")
    return b"BM" + struct.pack("<IHHI", start + len(data), 0, 0, start) + body + data


def rle8(indices: np.ndarray) -> bytes:
    return b"".join(b"".join(bytes((1, int(v))) for v in row) + b"\0\0" for row in indices[::-1]) + b"\0\1"


def bmp_cases() -> dict[str, bytes]:
    """Every BMP layout: decoded right (compared with Pillow) or refused from the header."""
    h, w = RGB.shape[:2]
    cases = {}
    for top_down in (False, True):
        order = "top-down" if top_down else "bottom-up"
        cases[f"BMP 24-bit {order}"] = bmp(w, h, 24, bgr_rows(RGB), top_down=top_down)
        cases[f"BMP 32-bit {order}"] = bmp(w, h, 32, bgr_rows(RGB, pad=1), top_down=top_down)
        cases[f"BMP 16-bit {order}"] = bmp(w, h, 16, masked_rows(RGB, 16, (0x7C00, 0x3E0, 0x1F)), top_down=top_down)
        for bits in (1, 4, 8):
            indices = RNG.integers(0, 2**bits, (h, w))
            rows = indices_rows(indices, bits)
            cases[f"BMP {bits}-bit palette {order}"] = bmp(
                w, h, bits, rows, top_down=top_down, palette=PALETTE[: 2**bits]
            )
    few = RNG.integers(0, 20, (h, w))
    cases["BMP 8-bit, 20 colours"] = bmp(w, h, 8, indices_rows(few, 8), palette=PALETTE[:20], colours=20)
    rgb565 = (0xF800, 0x7E0, 0x1F)
    cases["BMP 16-bit 565 bit fields"] = bmp(w, h, 16, masked_rows(RGB, 16, rgb565), compression=3, masks=rgb565)
    for header, masks in [(40, (0xFF0000, 0xFF00, 0xFF)), (108, (0xFF, 0xFF00, 0xFF0000, 0xFF000000))]:
        rows = masked_rows(RGB, 32, masks)
        cases[f"BMP 32-bit bit fields {masks[0]:#x} header {header}"] = bmp(
            w, h, 32, rows, header=header, compression=3, masks=masks
        )
    bgra = (0xFF0000, 0xFF00, 0xFF, 0xFF000000)
    cases["BMP 32-bit BGRA bit fields, top-down, V5"] = bmp(
        w, h, 32, masked_rows(RGB, 32, bgra), header=124, compression=3, masks=bgra, top_down=True
    )
    cases["BMP 24-bit V5"] = bmp(w, h, 24, bgr_rows(RGB), header=124)
    cases["BMP OS/2 24-bit"] = bmp(w, h, 24, bgr_rows(RGB), header=12)
    indices = RNG.integers(0, 256, (h, w))
    cases["BMP OS/2 8-bit palette"] = bmp(w, h, 8, indices_rows(indices, 8), header=12, palette=PALETTE)
    for mode in ("RGB", "RGBA", "L", "P", "1"):
        cases[f"BMP by Pillow, {mode}"] = encoded(PIL.Image.fromarray(RGB).convert(mode), "BMP")
    return cases


def refused_bmps() -> dict[str, tuple[bytes, str]]:
    h, w = RGB.shape[:2]
    good = bmp(w, h, 24, bgr_rows(RGB))
    indices = RNG.integers(0, 16, (h, w))
    return {
        "BMP RLE8": (bmp(w, h, 8, None, compression=1, palette=PALETTE, data=rle8(indices)), "run-length-compressed"),
        "BMP RLE4": (
            bmp(w, h, 4, None, compression=2, palette=PALETTE[:16], data=b"\0\1"),
            "run-length-compressed",
        ),
        "BMP holding a JPEG": (bmp(w, h, 0, None, compression=4, data=b"\xff\xd8" * 40), "compressed in a way"),
        "BMP 2-bit": (bmp(w, h, 2, indices_rows(indices % 4, 2), palette=PALETTE[:4]), "pixel depth"),
        "BMP unknown header": (good[:14] + struct.pack("<I", 20) + good[18:], "header the model does not know"),
        "BMP zero width": (bmp(0, h, 24, [b""] * h), "no pixels"),
        "BMP 24-bit truncated": (good[:-10], "truncated BMP"),
        "BMP pixels inside the palette": (
            bmp(w, h, 8, indices_rows(indices, 8), palette=PALETTE, offset=54),
            "start inside its header or palette",
        ),
        "BMP index past a 16-colour palette": (
            bmp(w, h, 8, indices_rows(indices + 200, 8), palette=PALETTE[:16], colours=16),
            "a colour its palette lacks",
        ),
        "BMP scattered bit-field masks": (
            bmp(w, h, 32, bgr_rows(RGB, pad=1), compression=3, masks=(0xF0F0, 0xFF0000, 0xFF)),
            "colour masks",
        ),
        "BMP OS/2 with 16-bit sides past the pixel limit": (
            bmp(0xFFFF, 0xFFFF, 24, None, header=12, data=b""),
            f"declares more than {MAX_INPUT_PIXELS} pixels",
        ),
    }


# GIF: blocks written by hand; image data as 9-bit LZW codes with a clear code every 250 pixels.
def lzw(indices: np.ndarray) -> bytes:
    flat = np.asarray(indices, np.int64).ravel()
    codes = []
    for start in range(0, len(flat), 250):
        codes += [256, *flat[start : start + 250]]
    codes.append(257)
    bits = ((np.array(codes)[:, None] >> np.arange(9)) & 1).astype(np.uint8).ravel()
    return b"\x08" + sub_blocks(np.packbits(bits, bitorder="little").tobytes())


def sub_blocks(data: bytes) -> bytes:
    return b"".join(bytes((len(data[i : i + 255]),)) + data[i : i + 255] for i in range(0, len(data), 255)) + b"\0"


def frame(indices: np.ndarray, left: int = 0, top: int = 0, size: tuple[int, int] | None = None, local=None) -> bytes:
    height, width = size or indices.shape
    bits = max(1, (len(local or []) - 1).bit_length())  # a local table holds 2**bits colours
    table = b"".join(bytes(c) for c in local or []).ljust(3 * 2**bits, b"\0") if local else b""
    packed = 0x80 | (bits - 1) if local else 0
    return b"," + struct.pack("<4HB", left, top, width, height, packed) + table + lzw(indices)


def gif(width: int, height: int, blocks: list[bytes], palette=PALETTE, trailer: bool = True) -> bytes:
    screen = struct.pack("<2H3B", width, height, 0xF7 if palette else 0, 0, 0)
    return b"GIF89a" + screen + b"".join(bytes(c) for c in palette or []) + b"".join(blocks) + b";" * trailer


def comment(text: bytes) -> bytes:
    return b"!\xfe" + sub_blocks(text)


def pillow_frame(image: PIL.Image.Image) -> bytes:
    """The image descriptor and LZW data of a GIF Pillow writes, to build big frames in few bytes."""
    data = encoded(image, "GIF")
    i = 13 + (3 << (data[10] % 8 + 1) if data[10] & 0x80 else 0)
    while data[i] == 0x21:  # extensions: introducer, label, sub-blocks
        i += 2
        while data[i]:
            i += data[i] + 1
        i += 1
    end = i + 11 + (3 << (data[i + 9] % 8 + 1) if data[i + 9] & 0x80 else 0)
    while data[end]:
        end += data[end] + 1
    return data[i : end + 1]


def gif_cases() -> dict[str, tuple[bytes, str | None]]:
    """(bytes, None: compare with Pillow, or a fragment of the refusal)."""
    indices = RNG.integers(0, 256, (18, 24))
    second = (indices + 128) % 256
    small = RNG.integers(0, 256, (6, 10))
    return {
        "GIF": (gif(24, 18, [frame(indices)]), None),
        "GIF local colour table": (gif(24, 18, [frame(indices, local=PALETTE)], palette=None), None),
        "GIF comment and application blocks": (
            gif(24, 18, [comment(b"made here" * 60), b"!\xff\x0bNETSCAPE2.0\x03\x01\0\0\0", frame(indices)]),
            None,
        ),
        "GIF 300 frames gives the first": (gif(24, 18, [frame(indices)] + [frame(second)] * 299), None),
        "GIF by Pillow, animated": (
            encoded(
                PIL.Image.fromarray(RGB).convert("P"),
                "GIF",
                save_all=True,
                append_images=[PIL.Image.fromarray(255 - RGB).convert("P")],
            ),
            None,
        ),
        "GIF with a 3000x3000 second frame gives the first at its size": (
            gif(24, 18, [frame(indices), pillow_frame(PIL.Image.new("P", (3000, 3000)))]),
            None,
        ),
        "GIF with a later frame declaring 20000x20000": (
            gif(24, 18, [frame(indices), frame(small, size=(20000, 20000))]),
            None,
        ),
        "GIF first frame declaring 20000x20000 on a 10x10 screen": (
            gif(10, 10, [frame(small, size=(20000, 20000))]),
            f"reaches past {MAX_INPUT_PIXELS} pixels",
        ),
        "GIF first frame at 60000, 60000": (gif(10, 10, [frame(small, left=60000, top=60000)]), "reaches past"),
        "GIF empty first frame": (gif(10, 10, [frame(small, size=(0, 10))]), "first frame is empty"),
        "GIF without an image": (gif(10, 10, [comment(b"nothing")]), "a block of unknown type, or no image"),
        "GIF with an unknown block": (gif(24, 18, [b"\x99", frame(indices)]), "a block of unknown type"),
        "GIF truncated in its image data": (gif(24, 18, [frame(indices)])[:300], "truncated GIF"),
        "GIF truncated in its screen descriptor": (b"GIF89a\x10\0", "truncated GIF"),
        f"GIF with {MAX_BLOCKS_WALKED} blocks before its frame": (
            gif(24, 18, [comment(b"x")] * (MAX_BLOCKS_WALKED // 3 + 1) + [frame(indices)]),
            f"more than {MAX_BLOCKS_WALKED} blocks",
        ),
    }


def placed_gifs() -> dict[str, tuple[bytes, np.ndarray]]:
    """A first frame smaller than the screen sits at its place on black; one reaching past the screen grows it."""
    indices = RNG.integers(0, 256, (6, 10))
    cases = {}
    for name, screen in (("GIF frame at 5, 7 on a 24x18 screen", (18, 24)), ("GIF frame past an 8x8 screen", (8, 8))):
        expected = np.zeros((*np.maximum(screen, (13, 15)), 3))
        expected[7:13, 5:15] = np.asarray([[PALETTE[i] for i in row] for row in indices]) / 255
        cases[name] = (gif(screen[1], screen[0], [frame(indices, left=5, top=7)]), expected)
    return cases


# JPEG: segments as libjpeg reads them; a scan runs to the next marker that is not stuffing or RSTn.
def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    segments, i = [(0xD8, data[:2])], 2
    while i < len(data) and data[i + 1] != 0xD9:
        marker = data[i + 1]
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        while marker == 0xDA and not (data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7):
            end += 1
        segments.append((marker, data[i:end]))
        i = end
    return segments


def with_extra_scans(data: bytes, extra: int) -> bytes:
    """`data` with its smallest scan repeated `extra` more times before the end of image."""
    segments = jpeg_segments(data)
    smallest = min((s for m, s in segments if m == 0xDA), key=len)
    return b"".join(s for _, s in segments) + smallest * extra + b"\xff\xd9"


def scans(data: bytes) -> int:
    return sum(m == 0xDA for m, _ in jpeg_segments(data))


def declaring(data: bytes, height: int, width: int) -> bytes:
    """`data` with its frame header declaring another size (refused before decoding, so never decoded)."""
    at = data.index(b"\xff\xc2")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


FLAT = np.full((100, 100, 3), (200, 120, 40), np.uint8)  # 10,000 px: the scan limit is 100,000 scans
PROGRESSIVE = encoded(PIL.Image.fromarray(FLAT), "JPEG", progressive=True)
MEGA = encoded(PIL.Image.fromarray(np.full((1000, 1000, 3), 90, np.uint8)), "JPEG", progressive=True)
MEGA_SCANS = MAX_JPEG_SCAN_PIXELS // 1_000_000  # scans a 1000x1000 JPEG may have


def jpeg_cases() -> dict[str, tuple[bytes, str | None]]:
    """(bytes, None: the same floats as tf.io.decode_image, or a fragment of the refusal)."""
    photo = (np.clip(RNG.normal(128, 40, (48, 64, 3)), 0, 255)).astype(np.uint8)
    attack = declaring(with_extra_scans(PROGRESSIVE, 300), 7000, 7000)
    comments = PROGRESSIVE[:2] + b"\xff\xfe\x00\x03x" * MAX_BLOCKS_WALKED + PROGRESSIVE[2:]
    return {
        "JPEG baseline": (encoded(PIL.Image.fromarray(photo), "JPEG"), None),
        "JPEG progressive": (encoded(PIL.Image.fromarray(photo), "JPEG", progressive=True), None),
        "JPEG grey progressive": (encoded(PIL.Image.fromarray(photo[..., 0]), "JPEG", progressive=True), None),
        "JPEG with 310 scans at 100x100": (with_extra_scans(PROGRESSIVE, 300), None),
        f"JPEG with {MEGA_SCANS} scans at 1000x1000": (with_extra_scans(MEGA, MEGA_SCANS - scans(MEGA)), None),
        f"JPEG with {MEGA_SCANS + 1} scans at 1000x1000": (
            with_extra_scans(MEGA, MEGA_SCANS + 1 - scans(MEGA)),
            "too many scans for its size",
        ),
        "JPEG declaring 7000x7000 with 310 scans": (attack, "too many scans for its size"),
        f"JPEG with {MAX_BLOCKS_WALKED} comments": (comments, f"more than {MAX_BLOCKS_WALKED} marker segments"),
    }


def golden_cases() -> dict[str, bytes]:
    """Images TensorFlow decodes right today: the same floats must come back."""
    grey16 = (RNG.integers(0, 65536, (9, 11))).astype(np.uint16)
    image = PIL.Image.fromarray(RGB)
    return {
        "PNG": encoded(image, "PNG"),
        "PNG grey": encoded(image.convert("L"), "PNG"),
        "PNG grey and alpha": encoded(image.convert("LA"), "PNG"),
        "PNG RGBA": encoded(image.convert("RGBA"), "PNG"),
        "PNG palette": encoded(image.convert("P"), "PNG"),
        "PNG 16-bit grey": encoded(PIL.Image.fromarray(grey16), "PNG"),
        "PNG 16-bit RGB": tf.io.encode_png(RNG.integers(0, 65536, (9, 11, 3)).astype(np.uint16)).numpy(),
        "GIF by Pillow": encoded(image.convert("P"), "GIF"),
        "BMP by Pillow (24-bit, bottom-up)": encoded(image, "BMP"),
    }


@dataclasses.dataclass(frozen=True)
class Case:
    data: bytes
    refusal: str | None = None  # a fragment of the INVALID_ARGUMENT message; None: decoded
    pillow: bool = False  # compare with Pillow to 1/255 rather than with tf.io.decode_image exactly
    expected: np.ndarray | None = None  # or with these pixels [H, W, 3]


def all_cases() -> dict[str, Case]:
    cases = {name: Case(data, pillow=True) for name, data in bmp_cases().items()}
    cases.update({name: Case(data, refusal) for name, (data, refusal) in refused_bmps().items()})
    cases.update({name: Case(data, refusal, pillow=True) for name, (data, refusal) in gif_cases().items()})
    cases.update({name: Case(data, refusal) for name, (data, refusal) in jpeg_cases().items()})
    cases.update({name: Case(data) for name, data in golden_cases().items()})
    cases.update({name: Case(data, expected=pixels) for name, (data, pixels) in placed_gifs().items()})
    cases["a good PNG, last"] = Case(encoded(PIL.Image.fromarray(RGB), "PNG"))
    return cases


CASES = all_cases()


class Decoder(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def decode(self, image):
        return {"pixels": decoders.decode(image, "style")}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> pathlib.Path:
    """A SavedModel whose only signature is `decode`, for a child to load the server's way."""
    path = tmp_path_factory.mktemp("decoder") / "1"
    module = Decoder()
    tf.saved_model.save(module, str(path), signatures={"decode": module.decode})
    return path


CHILD = """
import pickle, sys
import numpy as np, tensorflow as tf
from nst_model.session import ServingSession
session = ServingSession(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    cases = pickle.load(f)
results = {}
for name, data in cases.items():
    print(name, flush=True)  # the last name printed is the case that killed the process
    try:
        results[name] = ("OK", session.run("decode", {"image": np.array(data, object)})["pixels"])
    except tf.errors.OpError as e:
        results[name] = (type(e).__name__, e.message.splitlines()[0])
with open(sys.argv[3], "wb") as f:
    pickle.dump(results, f)
"""


def in_child(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env)


def survived(process: subprocess.CompletedProcess) -> None:
    last = process.stdout.strip().splitlines()[-1:] or ["before any case"]
    assert process.returncode == 0, f"child died (status {process.returncode}) at {last[0]}: {process.stderr[-2000:]}"


@pytest.fixture(scope="module")
def outcomes(model, tmp_path_factory) -> dict[str, tuple[str, object]]:
    """Every case's (status, pixels or message), from one child process running them in order."""
    folder = tmp_path_factory.mktemp("cases")
    (folder / "cases.pickle").write_bytes(pickle.dumps({name: case.data for name, case in CASES.items()}))
    process = in_child("-c", CHILD, str(model), str(folder / "cases.pickle"), str(folder / "results.pickle"))
    survived(process)
    return pickle.loads((folder / "results.pickle").read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_each_case_decodes_right_or_is_refused_with_its_reason(outcomes, name):
    case = CASES[name]
    status, value = outcomes[name]
    if case.refusal:
        assert status == "InvalidArgumentError", (name, status, value)
        assert case.refusal in value and "style" in value, value
        return
    assert status == "OK", (name, status, value)
    if case.expected is not None:
        np.testing.assert_allclose(value[0], case.expected, atol=1e-6)
    elif case.pillow:
        expected = np.asarray(PIL.Image.open(io.BytesIO(case.data)).convert("RGB")) / 255
        assert value.shape == (1, *expected.shape)
        np.testing.assert_allclose(value[0], expected, atol=1 / 255 + 1e-6)
    else:
        expected = tf.io.decode_image(case.data, channels=3, dtype=tf.float32, expand_animations=False).numpy()
        np.testing.assert_array_equal(value[0], expected)


def test_jpeg_scans_are_counted_as_libjpeg_reads_them():
    """Scan markers inside an EXIF thumbnail, a comment, or data after the end of image are not scans."""
    thumbnail = encoded(PIL.Image.fromarray(FLAT[:16, :16]), "JPEG", progressive=True)
    exif = b"Exif\0\0" + thumbnail
    data = (
        PROGRESSIVE[:2]
        + b"\xff\xe1"
        + struct.pack(">H", len(exif) + 2)
        + exif
        + b"\xff\xfe\x00\x06\xff\xda\xff\xd9"
        + PROGRESSIVE[2:]
        + thumbnail
        + b"\xff\xda" * 50
    )

    @tf.function
    def count(contents):
        return decoders._jpeg_scans(contents, tf.constant(1, tf.int64))

    assert int(count(tf.constant(PROGRESSIVE))[0]) == scans(PROGRESSIVE) == 10
    assert int(count(tf.constant(data))[0]) == 10
    assert int(count(tf.constant(with_extra_scans(PROGRESSIVE, 7)))[0]) == 17


def test_declared_size_reads_each_header():
    size = tf.function(decoders.declared_size)
    h, w = RGB.shape[:2]
    assert size(tf.constant(bmp(w, h, 24, bgr_rows(RGB), header=12))).numpy().tolist() == [h, w]
    assert size(tf.constant(bmp(w, h, 24, bgr_rows(RGB), top_down=True))).numpy().tolist() == [h, w]
    assert size(tf.constant(gif(24, 18, []))).numpy().tolist() == [18, 24]
    assert size(tf.constant(PROGRESSIVE)).numpy().tolist() == [100, 100]
    assert size(tf.constant(b"not an image")).numpy().tolist() == [0, 0]


# Fuzzing, in a child: the child runs hypothesis itself, so a crash fails the test rather than pytest.
BMP_FIELDS = [(10, 4), (14, 4), (18, 4), (22, 4), (18, 2), (20, 2), (24, 2), (26, 2), (28, 2), (30, 4), (46, 4)]
BMP_FIELDS += [(54, 4), (58, 4), (62, 4)]
VALUES = st.sampled_from([0, 1, 2, 3, 4, 8, 12, 16, 24, 32, 40, 64, 124, 255, 256, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1])


def fuzz_here(model: str, examples: int) -> None:
    """Mutated BMP and GIF headers and JPEG scan structures: only OK or INVALID_ARGUMENT."""
    session = ServingSession(model)

    def outcome(data: bytes) -> str:
        try:
            session.run("decode", {"image": np.array(data, object)})
        except tf.errors.InvalidArgumentError:
            return "invalid"
        return "ok"

    quick = settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    bmps = sorted(bmp_cases().items())

    @quick
    @given(
        base=st.sampled_from(bmps),
        edits=st.lists(
            st.tuples(st.sampled_from(BMP_FIELDS), VALUES | st.integers(0, 2**32 - 1)), min_size=1, max_size=4
        ),
        cut=st.none() | st.integers(0, 400),
    )
    def mutated_bmp(base, edits, cut):
        data = bytearray(base[1])
        for (at, size), value in edits:
            data[at : at + size] = (value % 2 ** (8 * size)).to_bytes(size, "little")
        assert outcome(bytes(data[:cut])) in ("ok", "invalid")

    indices = RNG.integers(0, 256, (12, 16))
    base_gif = gif(16, 12, [comment(b"hello"), frame(indices % 128, local=PALETTE[:128]), frame(indices)])
    descriptor = base_gif.index(b",")
    gif_fields = [(6, 2), (8, 2), (10, 1)] + [(descriptor + 1 + 2 * k, 2) for k in range(4)] + [(descriptor + 9, 1)]

    @quick
    @given(
        edits=st.lists(
            st.tuples(st.sampled_from(gif_fields), st.sampled_from([0, 1, 7, 16, 128, 255, 4096, 0xFFFF])), max_size=3
        ),
        bytes_=st.lists(st.tuples(st.integers(13, len(base_gif) - 1), st.integers(0, 255)), max_size=3),
        cut=st.none() | st.integers(6, len(base_gif)),
    )
    def mutated_gif(edits, bytes_, cut):
        data = bytearray(base_gif)
        for (at, size), value in edits:
            data[at : at + size] = (value % 2 ** (8 * size)).to_bytes(size, "little")
        for at, value in bytes_:  # sub-block sizes and block types among them
            data[at] = value
        assert outcome(bytes(data[:cut])) in ("ok", "invalid")

    segments = jpeg_segments(encoded(PIL.Image.fromarray(FLAT[:24, :32]), "JPEG", progressive=True))
    scan_at = [i for i, (m, _) in enumerate(segments) if m == 0xDA]

    @quick
    @given(
        operations=st.lists(
            st.tuples(
                st.sampled_from(["repeat", "delete", "insert", "header"]),
                st.sampled_from(scan_at),
                st.integers(1, len(segments) - 1),
                st.integers(0, 255),
            ),
            min_size=1,
            max_size=5,
        ),
        end=st.booleans(),
    )
    def mutated_scans(operations, end):
        parts = [s for _, s in segments]
        for operation, scan, at, value in operations:
            scan, at = min(scan, len(parts) - 1), min(at, len(parts))
            if operation == "repeat":
                parts[scan:scan] = [parts[scan]] * (value % 40)
            elif operation == "delete" and len(parts) > 2:
                del parts[scan]
            elif operation == "insert":
                parts.insert(at, parts[scan])
            elif operation == "header" and len(parts[scan]) > 6:
                part = bytearray(parts[scan])
                part[4 + value % min(8, len(part) - 4)] = value
                parts[scan] = bytes(part)
        assert outcome(b"".join(parts) + b"\xff\xd9" * end) in ("ok", "invalid")

    mutated_bmp()
    mutated_gif()
    mutated_scans()
    assert outcome(encoded(PIL.Image.fromarray(RGB), "PNG")) == "ok"
    print("fuzzed", flush=True)


@pytest.mark.slow
def test_fuzzed_headers_and_scans_give_only_ok_or_invalid_argument(model):
    tests = pathlib.Path(__file__).parent
    code = f"import sys; sys.path.insert(0, {str(tests)!r}); import test_decoders as t; t.fuzz_here(sys.argv[1], 80)"
    process = in_child("-c", code, str(model))
    survived(process)
    assert process.stdout.strip().endswith("fuzzed"), process.stdout[-2000:] + process.stderr[-4000:]
