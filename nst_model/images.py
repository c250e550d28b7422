"""Python-side image handling: anything a user holds becomes encoded bytes for the graph.

Decoding and resizing happen in the graph only, so the Python API, the CLI and a server given
the same file produce the same pixels.
"""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
import PIL.Image
import tensorflow as tf

ImageLike = str | os.PathLike | bytes | PIL.Image.Image | np.ndarray


def encode(image: ImageLike, name: str = "image") -> bytes:
    """Encoded image bytes: a file's own bytes, or a lossless PNG of a PIL image or array.

    Arrays may be uint8 (0-255) or float (0-1), shaped [H, W], [H, W, C] or [1, H, W, C]; float
    arrays become 16-bit PNGs so that no precision is lost on the way in.
    """
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = pathlib.Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{name} image not found: {path}")
        return path.read_bytes()
    if isinstance(image, PIL.Image.Image):
        if image.mode not in ("1", "L", "LA", "RGB", "RGBA", "I;16"):
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(image, np.ndarray):
        return _encode_array(image, name)
    raise TypeError(f"{name} must be a path, bytes, a PIL image or a numpy array; got {type(image).__name__}")


def _encode_array(array: np.ndarray, name: str) -> bytes:
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[..., np.newaxis]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        raise ValueError(f"{name} array must be shaped [H, W], [H, W, 1|3|4] or [1, H, W, C]; got {array.shape}")
    if array.dtype == np.uint8:
        return tf.io.encode_png(array).numpy()
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{name} float array values must be finite and within [0, 1]")
        return tf.io.encode_png(np.round(array * 65535).astype(np.uint16)).numpy()
    raise ValueError(f"{name} array must be uint8 (0-255) or float (0-1); got {array.dtype}")
