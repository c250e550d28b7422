"""The Python API: style transfer in this process, through the calls a server would get.

`load(path)` runs an exported version the way TensorFlow Serving does (TF1 Session, signature
tensor names); `Stylizer.from_module` runs a model built here without exporting it. Either way a
run is the one chunk loop of nst_client.chunked, so the PNG equals, byte for byte, what the
server returns for the same images and options.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import PIL.Image
import tensorflow as tf

from nst_client import chunked, images
from nst_client.chunked import Result
from nst_client.progress import ProgressBar
from nst_client.settings import DEFAULT_CHUNK, DEFAULT_SCALES
from nst_model.options import BY_NAME, DEFAULTS
from nst_model.session import ServingSession
from nst_model.signatures import Servable

Styles = images.ImageLike | Sequence[images.ImageLike]

__all__ = ["Result", "Stylizer", "load"]


class Stylizer:
    """Style transfer through a model's signatures, called as `call(signature, inputs, outputs)`."""

    def __init__(self, call: chunked.Call, defaults: Mapping[str, np.ndarray], keep_alive: object = None):
        self.call = call
        self.defaults = defaults  # the model's own: steps and optimizer, where a run leaves them out
        self._keep_alive = keep_alive  # what the call needs alive: a Session, a module

    @classmethod
    def from_module(cls, servable: Servable) -> Stylizer:
        """Calls of the tf.functions of a Servable built in this process (nothing exported)."""

        def call(signature: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
            out = getattr(servable, signature)(**{k: tf.constant(v) for k, v in inputs.items()})
            return {k: out[k].numpy() for k in (outputs or out)}

        return cls(call, {name: _typed(name, value) for name, value in DEFAULTS.items()}, servable)

    def stylize(self, content: images.ImageLike, style: Styles, **options: object) -> PIL.Image.Image:
        """`content` painted in `style`: paths, bytes, PIL images or arrays in, a PIL image out.

        `style` is one image or a list of them (blended by the `style_weights` option).
        Keywords: the options of `nst_model.options.OPTIONS` (steps, max_dim, style_weight, ...),
        `chunk` (steps per call, 0 for one call), `scales` (coarse-to-fine: longest sides to run at
        before max_dim, e.g. (256, 512); `steps` is split over them, see nst_client.chunked.plan) and
        `progress` (show a progress bar).
        """
        return self.run(content, style, **options).image

    def run(
        self,
        content: images.ImageLike,
        style: Styles,
        *,
        chunk: int = DEFAULT_CHUNK,
        scales: Sequence[int] = DEFAULT_SCALES,
        progress: bool | chunked.Progress = True,
        checkpoint: chunked.Checkpoint | None = None,
        checkpoint_every: int = 0,
        pace: Callable[[int, float], int] | None = None,
        mask: images.ImageLike | None = None,
        **options: object,
    ) -> Result:
        """As `stylize`, returning the PNG bytes and the losses. `progress` may also be a callback
        (steps done, total, loss), counting the steps of every scale; `checkpoint(steps, png)` is
        called every `checkpoint_every` steps; `pace(steps, loss)` after each call of the last
        scale gives the most steps of the next, 0 ending the run there. `mask` is an image whose
        colours are regions, each painted by the style `mask_styles` gives it (docs/controls.md)."""
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        typed = {name: _typed(name, value) for name, value in options.items()}
        styles = [images.encode(s, "style") for s in ([style] if isinstance(style, images.ImageLike) else style)]
        with ProgressBar(disable=progress is not True) as bar:
            return chunked.run(
                self.call,
                images.encode(content, "content"),
                styles,
                typed,
                self.defaults,
                chunk=chunk,
                scales=scales,
                progress=progress if callable(progress) else bar,
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                pace=pace,
                mask=None if mask is None else images.encode(mask, "mask"),
            )


def _typed(name: str, value: object) -> np.ndarray:
    """An option value as the array its signature input takes."""
    dtype = BY_NAME[name].dtype
    if dtype == "string":
        return np.array(value.encode() if isinstance(value, str) else value, object)
    return np.asarray(value, dtype=np.dtype(dtype))


def load(path: str | os.PathLike) -> Stylizer:
    """A Stylizer over an exported SavedModel version folder, e.g. "models/nst/1", loaded the
    way the server loads it."""
    return over_session(ServingSession(path))


def over_session(session: ServingSession) -> Stylizer:
    """A Stylizer whose calls run on `session`, an export loaded the server's way."""
    defaults = {  # decode's for max_dim, which coarse-to-fine needs and pixels does not take
        k: tf.make_ndarray(v) for name in ("decode", "pixels") for k, v in session.signature(name).defaults.items()
    }
    return Stylizer(
        lambda signature, inputs, outputs: session.run(signature, dict(inputs), list(outputs)), defaults, session
    )
