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

Coarse-to-fine (`scales`): the same chunks, run at each longest side in turn; a scale decodes the
images at its size, computes its own targets, and starts a fresh optimiser from the previous
scale's raw image upsampled to its content (see `plan` for how the steps are split).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import PIL.Image

from .errors import InputError
from .settings import DEFAULT_SCALES, MIN_SCALE

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
    """A finished run: the PNG the model encoded, its final losses, the version that ran it
    (None where the API does not say, as over REST), and how long its calls waited for a free replica."""

    png: bytes
    losses: dict[str, float]
    model_version: int | None
    waited_s: float = 0.0

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
    scales: Sequence[int] = DEFAULT_SCALES,
    progress: Progress | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 0,
    pace: Callable[[int, float], int] | None = None,
    mask: bytes | None = None,
) -> Result:
    """Run the model on encoded images with `options` (arrays typed for the signatures).

    `defaults` are the model's own defaults (for steps, optimizer and max_dim where `options` leave
    them out). `chunk` > 0 cuts the run into calls of at most `chunk` steps and reports to `progress`;
    0 sends one serving_default call (one `pixels` call per scale with `scales`). `scales`: longest
    sides to run at before max_dim, coarse-to-fine (see `plan`); progress, checkpoints and Ctrl-C
    count the steps of all scales together. `checkpoint` gets the PNG every `checkpoint_every` steps.
    `pace(steps done, loss)`, after each call of the last scale, gives the most steps the next call
    may run, 0 ending the run there (the benchmark runs until a loss, in shorter calls as it nears
    it). Ctrl-C raises Interrupted with the last finished chunk's PNG. `mask`, an encoded region
    map (see `mask_styles`), goes with every call: each call makes its regions at its content's size.
    """
    steps = int(options.get("steps", defaults.get("steps", 0)))
    optimizer = _text(options.get("optimizer", defaults.get("optimizer", "lbfgs")))
    every = checkpoint_every if checkpoint else 0
    stages = plan(scales, int(options.get("max_dim", defaults.get("max_dim", 0))), steps) if scales else [(0, steps)]
    masked = {} if mask is None else {"mask": np.array(mask, object)}
    if len(stages) == 1 and (chunk == 0 or steps <= chunk) and not every:
        images = {"content": np.array(content, object), "style": _styles(styles), **masked}
        out = call(SERVING_DEFAULT, {**options, **images}, ("image_bytes", *LOSSES))  # a mask beats a default one
        if progress:
            progress(steps, steps, float(out["loss"]))
        return _result(out)
    if optimizer not in ("adam", "lbfgs"):
        optimizer = "lbfgs"  # the model refuses the name in the first call, with its own message

    decode_options = {k: v for k, v in options.items() if k in DECODE_OPTIONS}
    feeds = {k: v for k, v in options.items() if k not in DECODE_OPTIONS and k != "steps"}

    def decode(image: bytes, sizing: Mapping[str, np.ndarray]) -> np.ndarray:
        return call(DECODE, {"image": np.array(image, object), **sizing}, ("pixels",))["pixels"]

    done, png, image = 0, None, None
    if progress:
        progress(0, steps, math.nan)
    try:
        for index, (side, stage_steps) in enumerate(stages):
            final = index == len(stages) - 1
            # The last scale decodes as a single-scale run does (max_dim as the options give it).
            sizing = decode_options if final else {"max_dim": np.array(side, np.int32)}
            content_pixels = decode(content, sizing)
            style_pixels = style_batch([decode(s, sizing) for s in styles])
            # A scale's first call: its styles, and the previous scale's image (a fresh optimiser from it).
            state = {} if image is None else {"image": upsample(image, content_pixels.shape)}
            targets: dict[str, np.ndarray] = {}  # empty: this call computes them
            end, most = done + stage_steps, chunk or stage_steps
            while True:
                todo = min(most, end - done)
                if every:
                    todo = min(todo, every - done % every)
                last = done + todo >= end
                # Every call after a scale's first asks for the same outputs, the last one too: the server
                # builds an executor per set of inputs and outputs (seconds), and two sets per optimiser are
                # what the export's warmup requests prepare. The last call's state is a few MB to spare.
                wanted = ("image_bytes", *LOSSES, *state_names(optimizer), *([] if targets else TARGETS))
                images = {"content": content_pixels, **masked, **({} if targets else style_pixels)}
                steps_array = np.array(todo, np.int32)
                out = call(PIXELS, {**feeds, **images, **state, "steps": steps_array}, wanted)
                done += todo
                png = _bytes(out["image_bytes"])
                if progress:
                    progress(done, steps, float(out["loss"]))
                if every and (done % every == 0 or (last and final)):
                    checkpoint(done, png)
                if last:
                    break
                if final and pace:
                    most = min(chunk or stage_steps, pace(done, float(out["loss"])))
                    if most <= 0:
                        break
                targets = targets or {k: out[k] for k in TARGETS}
                state = {**{k: out[k] for k in state_names(optimizer)}, **targets}
            image = out["image"]
    except KeyboardInterrupt:
        raise Interrupted(done, png) from None
    return _result(out)


def scales_problem(scales: Sequence[int], max_dim: int) -> str | None:
    """Why `scales` cannot lead up to `max_dim`, in one line; None if they can."""
    shown = ",".join(map(str, scales))
    if not all(isinstance(s, int | np.integer) for s in scales):
        return f"scales must be whole numbers of pixels; got {shown}"
    if any(a >= b for a, b in itertools.pairwise(scales)):
        return f"scales must increase; got {shown}"
    if scales and scales[0] < MIN_SCALE:
        return f"scales must be at least {MIN_SCALE} px; got {shown}"
    if scales and scales[-1] > max_dim:
        return f"scales must not exceed max_dim ({max_dim}); got {shown}"
    return None


def plan(scales: Sequence[int], max_dim: int, steps: int) -> list[tuple[int, int]]:
    """(longest side, steps) of each scale: `scales`, then max_dim unless they end with it.

    The split follows crowsonkb/style-transfer-pytorch (`initial_iterations` at its first scale,
    `iterations` at each later one, 1000 and 500 by default): with n scales, the first gets
    2/(n+1) of `steps`, each later one 1/(n+1), rounded down, and the last one what remains.
    Scales below max_dim left with no steps are dropped. Raises InputError for bad scales.
    """
    if problem := scales_problem(scales, max_dim):
        raise InputError(problem)
    sides = [*scales, max_dim] if not scales or scales[-1] != max_dim else list(scales)
    share = steps // (len(sides) + 1)
    split = [2 * share, *[share] * (len(sides) - 1)]
    split[-1] += steps - sum(split)
    return [(int(side), n) for side, n in zip(sides, split, strict=True) if n or side == max_dim]


def upsample(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A scale's raw image [1, h, w, 3] as the next scale's start: bicubic (as crowsonkb upsamples
    between scales) to exactly `shape`'s height and width, which `decode` chose for the next
    content (the aspect ratio is rounded anew at each size), clipped to [0, 1] as `pixels` requires."""
    height, width = int(shape[1]), int(shape[2])
    channels = [
        np.asarray(
            PIL.Image.fromarray(np.ascontiguousarray(image[0, :, :, c], np.float32)).resize(
                (width, height), PIL.Image.Resampling.BICUBIC
            )
        )
        for c in range(3)
    ]
    return np.clip(np.stack(channels, -1)[np.newaxis], 0.0, 1.0).astype(np.float32)


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
