"""Images to the encoded bytes the model decodes in its graph: the project's one image encoder.

JPEG, PNG and GIF files travel as they are, so a 100 KB JPEG costs 100 KB on the wire and
decodes exactly as in-process. BMP (TensorFlow misreads or refuses several of its layouts:
top-down rows, palettes, bitfields, RLE, OS/2 headers), anything else Pillow opens, and
in-memory images become lossless PNGs decoded by Pillow. This module imports neither
TensorFlow nor grpc, so the in-process API and the command lines can use it cheaply.
"""

from __future__ import annotations

import io
import os
import pathlib
import stat
import struct
import threading
import warnings
import zlib

import numpy as np
import PIL.Image

from .errors import InputError

ImageLike = str | os.PathLike | bytes | PIL.Image.Image | np.ndarray

MODEL_FORMATS = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF"}
# The model refuses images over 50 megapixels; the largest plain encoding of one, uncompressed 16-bit
# RGBA (TIFF, PPM/PAM), is 400 MB. So no image the model takes is refused here, while /dev/zero-like
# inputs and huge files stop at a bound instead of filling the memory.
MAX_FILE_BYTES = 512 * 2**20
_PNG_MODES = ("1", "L", "LA", "RGB", "RGBA", "I;16")  # modes PNG stores without conversion
_ALPHA_MODES = {"La": "LA", "PA": "RGBA", "RGBa": "RGBA"}  # other modes with an alpha band, and what keeps it
_BOMB_CHECK = threading.Lock()  # warnings.catch_warnings changes process-wide state: one image at a time


def encode(image: ImageLike, name: str = "image") -> bytes:
    """Encoded bytes for `image`: a path, encoded bytes, a PIL image (any mode) or an array.

    Arrays may be uint8 (0-255) or float (0-1), shaped [H, W], [H, W, C] or [1, H, W, C];
    float arrays become 16-bit PNGs so that no precision is lost on the way. `name` (content,
    style) is named in errors, which are InputError (a ValueError) with one-line messages.
    """
    if isinstance(image, str | os.PathLike):
        path = pathlib.Path(image)
        return _as_model_format(_read_file(path, f"{name} image"), f"{name} image {path}")
    if isinstance(image, bytes):
        return _as_model_format(image, f"{name} image")
    if isinstance(image, PIL.Image.Image):
        return _png(image)
    if isinstance(image, np.ndarray):
        return _encode_array(image, name)
    raise InputError(f"{name} must be a path, bytes, a PIL image or a numpy array; got {type(image).__name__}")


def _read_file(path: pathlib.Path, what: str) -> bytes:
    """A regular file's bytes, at most MAX_FILE_BYTES: a device or a FIFO would never end or never start."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting for a writer
    except OSError as e:
        raise InputError(f"cannot read the {what} {path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"the {what} {path} is not a regular file: give an image file")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(MAX_FILE_BYTES + 1) if info.st_size <= MAX_FILE_BYTES else b""
    except OSError as e:
        raise InputError(f"cannot read the {what} {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if info.st_size > MAX_FILE_BYTES or len(data) > MAX_FILE_BYTES:  # a file may grow while it is read
        raise InputError(
            f"the {what} {path} is larger than {MAX_FILE_BYTES >> 20} MiB, more than any image the model takes "
            "(50 megapixels at most): make it smaller"
        )
    return data


def _as_model_format(data: bytes, what: str) -> bytes:
    if any(data.startswith(magic) for magic in MODEL_FORMATS):
        return data
    try:
        with _BOMB_CHECK, warnings.catch_warnings():
            # Above MAX_IMAGE_PIXELS Pillow only warns, and decodes; above twice that it raises.
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(data)) as opened:
                return _png(opened)
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as e:
        raise InputError(f"{what} is too large to decode ({e}): make it smaller (at most 50 megapixels)") from None
    except PIL.UnidentifiedImageError as e:
        raise InputError(f"{what} is not an image the client can read ({e.__class__.__name__})") from None
    except Exception as e:  # Pillow's decoders raise many types on malformed files: OSError, ValueError, ...
        raise InputError(f"{what} is not an image the client can read ({e.__class__.__name__}: {e})") from None


def _png(image: PIL.Image.Image) -> bytes:
    """A lossless PNG of a PIL image: modes PNG cannot store become RGB, or RGBA where they have alpha."""
    if image.mode in _ALPHA_MODES:
        image = image.convert(_ALPHA_MODES[image.mode])
    elif image.mode not in _PNG_MODES:
        image = image.convert("RGB")
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
