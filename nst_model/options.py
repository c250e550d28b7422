"""Every default and limit of the model, defined once.

The SavedModel signatures, the Python API, the command lines and the README table all read
their defaults from here, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses

# The reference algorithm (TensorFlow 2 style-transfer tutorial).
CONTENT_LAYER = "block5_conv2"
STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
ADAM_BETA_1 = 0.99
ADAM_BETA_2 = 0.999  # Keras's default, which the reference keeps.
ADAM_EPSILON = 0.1

# Limits enforced inside the graph, because the server checks nothing itself.
MAX_STEPS = 10_000  # per call; resume with the state inputs to go further
MIN_SIDE = 16  # VGG19 pools four times before block5_conv2: a side below 16 px has no features
MAX_SIDE = 2048  # longest side the optimisation runs at (memory grows with the pixel count)
MAX_INPUT_PIXELS = 50_000_000  # largest image accepted for decoding or resizing


@dataclasses.dataclass(frozen=True)
class Option:
    """A tunable input: a signature input with a default, a CLI flag and a Python keyword."""

    name: str
    dtype: str  # "int32" or "float32", the signature's dtype
    default: int | float
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("steps", "int32", 300, f"optimisation steps, 0 to {MAX_STEPS}"),
    Option(
        "max_dim",
        "int32",
        512,
        f"longest side, in pixels, both images are resized to ({MIN_SIDE} to {MAX_SIDE})",
    ),
    Option("style_weight", "float32", 1e-2, "weight of the style loss"),
    Option("content_weight", "float32", 1e4, "weight of the content loss"),
    Option("tv_weight", "float32", 1e8, "weight of the total-variation (smoothness) loss"),
    Option("learning_rate", "float32", 0.02, "Adam learning rate"),
)
DEFAULTS: dict[str, int | float] = {o.name: o.default for o in OPTIONS}
LOSS_OPTIONS = ("style_weight", "content_weight", "tv_weight", "learning_rate")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One command-line flag per option (--steps, --max-dim, ...), defaults from OPTIONS."""
    for o in OPTIONS:
        parser.add_argument(
            "--" + o.name.replace("_", "-"),
            type=int if o.dtype == "int32" else float,
            default=o.default,
            help=f"{o.help} (default {o.default:g})",
        )


def from_flags(args: argparse.Namespace) -> dict[str, int | float]:
    return {o.name: getattr(args, o.name) for o in OPTIONS}
