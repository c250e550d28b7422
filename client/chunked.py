"""One style-transfer run as calls of the model's signatures: the project's one chunk loop.

Every way of running the model goes through here: `nst-stylize` and `nst_model.load(...)` in
process, `NSTClient` over gRPC, and the benchmarks. All it needs of a model is a `Call`: "run this
signature with these inputs and give me these outputs", as numpy arrays.

A run is one `serving_default` call, or, for progress and checkpoints, `decode` for each image and
then `pixels` in chunks. The first chunk returns the style and content targets and each chunk the
optimiser's state; the next call sends them back instead of the styles, so no call recomputes
what an earlier one computed, and N calls of K steps give exactly the image of one call of N*K.
State outputs are named after the optimiser that uses them (`adam_*`, `lbfgs_*`) plus `image`;
a run sends back only those of its optimiser.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import PIL.Image

SERVING_DEFAULT, PIXELS, DECODE = "serving_default", "pixels", "decode"
LOSSES = ("loss", "style_loss", "content_loss", "tv_loss")
TARGETS = ("style_targets", "content_target")  # computed by a run's first chunk, sent back by the others
DECODE_OPTIONS = ("max_dim",)  # options `decode` takes and `pixels` does not

# (signature, inputs, wanted outputs; empty: all) -> outputs
Call = Callable[[str, Mapping[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]]
# (steps done, total steps, loss at the step just reached; NaN before the first chunk)
Progress = Callable[[int, int, float], None]
# (steps done, PNG at that step)
Checkpoint = Callable[[int, bytes], None]


@dataclasses.dataclass(frozen=True)
class Result:
    """A finished run: the PNG the model encoded, its final losses, and the version that ran it
    (None where the API does not say, as over REST)."""

    png: bytes
    losses: dict[str, float]
    model_version: int | None

    @property
    def image(self) -> PIL.Image.Image:
        return PIL.Image.open(io.BytesIO(self.png))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a chunked run; `png` is the image after the last finished chunk (None before one)."""

    def __init__(self, done: int, png: bytes | None):
        super().__init__(f"interrupted after {done} steps")
        self.done, self.png = done, png


def state_names(optimizer: str) -> tuple[str, ...]:
    """The `pixels` outputs a run with `optimizer` hands from one call to the next."""
    own = {"adam": ("adam_m", "adam_v", "adam_step"), "lbfgs": ("lbfgs_s", "lbfgs_y", "lbfgs_grad", "lbfgs_losses")}
    return ("image", *own[optimizer])


def run(
    call: Call,
    content: bytes,
    styles: Sequence[bytes],
    options: Mapping[str, np.ndarray],
    defaults: Mapping[str, np.ndarray],
    *,
    chunk: int,
    progress: Progress | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 0,
    stop: Callable[[int, float], bool] | None = None,
) -> Result:
    """Run the model on encoded images with `options` (arrays typed for the signatures).

    `defaults` are the model's own defaults (for steps and optimizer where `options` leave them
    out). `chunk` > 0 cuts the run into calls of at most `chunk` steps and reports to `progress`;
    0 sends one serving_default call. `checkpoint` gets the PNG every `checkpoint_every` steps.
    `stop(steps done, loss)` true after a chunk ends the run there (the benchmark's "until this
    loss"). Ctrl-C raises Interrupted with the last finished chunk's PNG.
    """
    steps = int(options.get("steps", defaults.get("steps", 0)))
    optimizer = _text(options.get("optimizer", defaults.get("optimizer", "lbfgs")))
    every = checkpoint_every if checkpoint else 0
    if (chunk == 0 or steps <= chunk) and not every:
        images = {"content": np.array(content, object), "style": _styles(styles)}
        out = call(SERVING_DEFAULT, {**images, **options}, ("image_bytes", *LOSSES))
        if progress:
            progress(steps, steps, float(out["loss"]))
        return _result(out)
    if optimizer not in ("adam", "lbfgs"):
        optimizer = "lbfgs"  # the model refuses the name in the first call, with its own message

    decode_options = {k: v for k, v in options.items() if k in DECODE_OPTIONS}
    feeds = {k: v for k, v in options.items() if k not in DECODE_OPTIONS and k != "steps"}

    def decode(image: bytes) -> np.ndarray:
        return call(DECODE, {"image": np.array(image, object), **decode_options}, ("pixels",))["pixels"]

    content_pixels = decode(content)
    style_pixels = style_batch([decode(s) for s in styles])
    state: dict[str, np.ndarray] = {}  # empty: the model starts the run and computes the targets
    targets: dict[str, np.ndarray] = {}
    done, png = 0, None
    if progress:
        progress(0, steps, math.nan)
    try:
        while True:
            todo = min(chunk or steps, steps - done)
            if every:
                todo = min(todo, every - done % every)
            last = done + todo >= steps
            # Every call after the first asks for the same outputs, the last one too: the server builds
            # an executor per set of inputs and outputs (seconds), and two sets per optimiser are what
            # the export's warmup requests prepare. The last call's state is a few MB to spare.
            wanted = ("image_bytes", *LOSSES, *state_names(optimizer), *([] if state else TARGETS))
            images = {"content": content_pixels} if state else {"content": content_pixels, **style_pixels}
            steps_array = np.array(todo, np.int32)
            out = call(PIXELS, {**images, **feeds, **state, "steps": steps_array}, wanted)
            done += todo
            png = _bytes(out["image_bytes"])
            if progress:
                progress(done, steps, float(out["loss"]))
            if every and (done % every == 0 or last):
                checkpoint(done, png)
            if last or (stop and stop(done, float(out["loss"]))):
                return _result(out)
            targets = targets or {k: out[k] for k in TARGETS}
            state = {**{k: out[k] for k in state_names(optimizer)}, **targets}
    except KeyboardInterrupt:
        raise Interrupted(done, png) from None


def style_batch(styles: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Decoded styles [1, h, w, 3] of any sizes as `pixels` takes them: zero-padded to one
    batch [styles, H, W, 3], with each one's own size in `style_sizes`."""
    sizes = [s.shape[1:3] for s in styles]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    batch = np.zeros((len(styles), height, width, 3), np.float32)
    for i, (s, (h, w)) in enumerate(zip(styles, sizes, strict=True)):
        batch[i, :h, :w] = s[0]
    return {"style": batch, "style_sizes": np.array(sizes, np.int32).reshape(-1, 2)}


def _styles(styles: Sequence[bytes]) -> np.ndarray:
    return np.array(styles[0], object) if len(styles) == 1 else np.array(list(styles), object)


def _text(value: object) -> str:
    value = np.asarray(value).item() if isinstance(value, np.ndarray) else value
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _bytes(value: bytes | np.ndarray) -> bytes:
    """A string output as bytes, whether a caller returns it as bytes or a 0-d object array."""
    return value if isinstance(value, bytes) else bytes(np.asarray(value, object).item())


def _result(out: Mapping[str, np.ndarray]) -> Result:
    return Result(_bytes(out["image_bytes"]), {k: float(out[k]) for k in LOSSES}, model_version=None)
