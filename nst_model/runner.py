"""Chunked runs of the model with a progress bar, for the Python API and the CLI.

Both the in-process module and a loaded SavedModel expose the same `decode` and `pixels`
functions; the run is cut into calls of `chunk` steps that hand the optimiser state on, which
gives exactly the image one long call would (the state is the whole loop carry).
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable

import PIL.Image
import tensorflow as tf
import tqdm

from nst_model import images
from nst_model.options import DEFAULTS, LOSS_OPTIONS

DEFAULT_CHUNK = 25
LOSS_NAMES = ("loss", "style_loss", "content_loss", "tv_loss")
SignatureFn = Callable[..., dict[str, tf.Tensor]]


@dataclasses.dataclass
class Result:
    png: bytes  # the PNG the graph encoded: the same bytes serving_default returns
    losses: dict[str, float]

    @property
    def image(self) -> PIL.Image.Image:
        return PIL.Image.open(io.BytesIO(self.png))


class Stylizer:
    """Style transfer through a model's `decode` and `pixels` functions."""

    def __init__(self, decode: SignatureFn, pixels: SignatureFn):
        self._decode = decode
        self._pixels = pixels

    def stylize(self, content: images.ImageLike, style: images.ImageLike, **options) -> PIL.Image.Image:
        """`content` painted in `style`: paths, bytes, PIL images or arrays in, a PIL image out.

        Keywords: the options of `nst_model.options.OPTIONS` (steps, max_dim, style_weight, ...),
        `chunk` (steps per call, 0 for one call) and `progress` (show a progress bar).
        """
        return self.run(content, style, **options).image

    def run(
        self,
        content: images.ImageLike,
        style: images.ImageLike,
        *,
        chunk: int = DEFAULT_CHUNK,
        progress: bool = True,
        **options: float,
    ) -> Result:
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        opts = {**DEFAULTS, **options}
        steps = int(opts["steps"])
        max_dim = tf.constant(int(opts["max_dim"]), tf.int32)
        feeds = {
            "content": self._decode(image=tf.constant(images.encode(content, "content")), max_dim=max_dim)["pixels"],
            "style": self._decode(image=tf.constant(images.encode(style, "style")), max_dim=max_dim)["pixels"],
            **{n: tf.constant(float(opts[n]), tf.float32) for n in LOSS_OPTIONS},
        }
        empty = tf.zeros([1, 0, 0, 3])
        state = {"image": empty, "adam_m": empty, "adam_v": empty, "adam_step": tf.constant(0)}
        chunk = chunk if chunk > 0 else max(steps, 1)
        done = 0
        with tqdm.tqdm(total=steps, unit="step", disable=not progress, dynamic_ncols=True) as bar:
            while True:
                todo = min(chunk, steps - done)
                out = self._pixels(**feeds, **state, steps=tf.constant(todo, tf.int32))
                state = {k: out[k] for k in state}
                done += todo
                bar.update(todo)
                bar.set_postfix(loss=f"{float(out['loss']):.4g}")
                if done >= steps:
                    break
        return Result(out["image_bytes"].numpy(), {k: float(out[k]) for k in LOSS_NAMES})


def load(path: str | os.PathLike) -> Stylizer:
    """A Stylizer over an exported SavedModel version folder, e.g. "models/nst/1"."""
    loaded = tf.saved_model.load(os.fspath(path))
    stylizer = Stylizer(loaded.signatures["decode"], loaded.signatures["pixels"])
    stylizer.saved_model = loaded  # keeps the functions' variables alive
    return stylizer


def error_message(error: tf.errors.OpError) -> str:
    """The line of a graph error that says what is wrong, without TensorFlow's decoration.

    Eager errors wrap it in a traceback ("Graph execution error: ..."); the reason is the line
    just above the first "[[{{node ...}}]]" marker.
    """
    lines = error.message.strip().splitlines()
    marker = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[[")), None)
    line = lines[marker - 1] if marker else lines[0]
    return line.removeprefix("assertion failed: ").replace("] [", " ").strip("[]")
