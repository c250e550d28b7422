"""Images to the encoded bytes the model decodes in its graph.

Files in a format the model reads (JPEG, PNG, GIF, BMP) travel as they are, so a 100 KB JPEG
costs 100 KB on the wire and decodes exactly as in-process; anything else Pillow opens, and
in-memory images, become lossless PNGs.
"""

from __future__ import annotations

import io
import os
import pathlib
import struct
import zlib

import numpy as np
import PIL.Image

from .errors import InputError

ImageLike = str | os.PathLike | bytes | PIL.Image.Image | np.ndarray

MODEL_FORMATS = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP"}
_PNG_MODES = ("1", "L", "LA", "RGB", "RGBA", "I;16")  # modes PNG stores without conversion


def encode(image: ImageLike, name: str = "image") -> bytes:
    """Encoded bytes for `image`: a path, encoded bytes, a PIL image or an array.

    Arrays may be uint8 (0-255) or float (0-1), shaped [H, W], [H, W, C] or [1, H, W, C];
    float arrays become 16-bit PNGs so that no precision is lost on the way.
    """
    if isinstance(image, str | os.PathLike):
        path = pathlib.Path(image)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(f"cannot read the {name} image {path}: {e.strerror}") from None
        return _as_model_format(data, f"{name} image {path}")
    if isinstance(image, bytes):
        return _as_model_format(image, f"{name} image")
    if isinstance(image, PIL.Image.Image):
        return _png(image)
    if isinstance(image, np.ndarray):
        return _encode_array(image, name)
    raise InputError(f"{name} must be a path, bytes, a PIL image or a numpy array; got {type(image).__name__}")


def _as_model_format(data: bytes, what: str) -> bytes:
    if any(data.startswith(magic) for magic in MODEL_FORMATS):
        return data
    try:
        with PIL.Image.open(io.BytesIO(data)) as opened:
            return _png(opened)
    except (PIL.UnidentifiedImageError, OSError) as e:
        raise InputError(f"{what} is not an image the client can read ({e.__class__.__name__})") from None


def _png(image: PIL.Image.Image) -> bytes:
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _encode_array(array: np.ndarray, name: str) -> bytes:
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[..., np.newaxis]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        raise InputError(f"{name} array must be shaped [H, W], [H, W, 1|3|4] or [1, H, W, C]; got {array.shape}")
    if array.dtype == np.uint8:
        return _png(PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise InputError(f"{name} float array values must be finite and within [0, 1]")
        return _png16(np.round(array * 65535).astype(">u2"))
    raise InputError(f"{name} array must be uint8 (0-255) or float (0-1); got {array.dtype}")


def _png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG of big-endian uint16 [H, W, C]; Pillow cannot write 16-bit colour PNGs."""
    height, width, channels = array.shape
    color_type = {1: 0, 3: 2, 4: 6}[channels]  # grey, RGB, RGBA

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + row.tobytes() for row in array.reshape(height, width * channels))
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
