"""Chunked runs of the model with a progress bar, for the Python API and the CLI.

Both the in-process module and a loaded SavedModel expose the same `decode` and `pixels`
functions; the run is cut into calls of `chunk` steps that hand the optimiser state on, which
gives exactly the image one long call would (the state is the whole loop carry).
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Sequence

import PIL.Image
import tensorflow as tf
import tqdm

from nst_model import images
from nst_model.options import BY_NAME, DEFAULTS, PIXELS_OPTIONS

DEFAULT_CHUNK = 25
LOSS_NAMES = ("loss", "style_loss", "content_loss", "tv_loss")
SignatureFn = Callable[..., dict[str, tf.Tensor]]
Styles = images.ImageLike | Sequence[images.ImageLike]


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

    def stylize(self, content: images.ImageLike, style: Styles, **options) -> PIL.Image.Image:
        """`content` painted in `style`: paths, bytes, PIL images or arrays in, a PIL image out.

        `style` is one image or a list of them (blended by the `style_weights` option).
        Keywords: the options of `nst_model.options.OPTIONS` (steps, max_dim, style_weight, ...),
        `chunk` (steps per call, 0 for one call) and `progress` (show a progress bar).
        """
        return self.run(content, style, **options).image

    def run(
        self,
        content: images.ImageLike,
        style: Styles,
        *,
        chunk: int = DEFAULT_CHUNK,
        progress: bool = True,
        **options: object,
    ) -> Result:
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        opts = {**DEFAULTS, **options}
        steps = int(opts["steps"])
        max_dim = tf.constant(int(opts["max_dim"]), tf.int32)
        styles = [style] if isinstance(style, images.ImageLike) else list(style)
        decoded = [
            self._decode(image=tf.constant(images.encode(s, "style")), max_dim=max_dim)["pixels"] for s in styles
        ]
        feeds = {
            "content": self._decode(image=tf.constant(images.encode(content, "content")), max_dim=max_dim)["pixels"],
            **style_batch(decoded),
            **{n: tf.constant(opts[n], tf.dtypes.as_dtype(BY_NAME[n].dtype)) for n in PIXELS_OPTIONS},
        }
        empty = tf.zeros([1, 0, 0, 3])
        no_history = tf.zeros([0, 0, 0, 3])
        state = {
            "image": empty,
            "adam_m": empty,
            "adam_v": empty,
            "adam_step": tf.constant(0),
            "lbfgs_s": no_history,
            "lbfgs_y": no_history,
        }
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


def style_batch(styles: list[tf.Tensor]) -> dict[str, tf.Tensor]:
    """Decoded styles [1, h, w, 3] of any sizes as `pixels` takes them: zero-padded to one
    batch [styles, H, W, 3], with each one's own size in `style_sizes`."""
    sizes = [(int(s.shape[1]), int(s.shape[2])) for s in styles]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    padded = [
        tf.pad(s, [[0, 0], [0, height - h], [0, width - w], [0, 0]]) for s, (h, w) in zip(styles, sizes, strict=True)
    ]
    return {"style": tf.concat(padded, 0), "style_sizes": tf.constant(sizes, tf.int32)}


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
    line = line.removeprefix("assertion failed: ").replace("] [", " ").strip()
    return line[1:-1] if line.startswith("[") and line.endswith("]") else line  # keeps "[0, 1]"
