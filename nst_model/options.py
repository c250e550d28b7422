"""Every default and limit of the model, defined once.

The SavedModel signatures, the Python API and the command lines read their defaults and limits
from here, so they cannot drift apart; a test checks the README's table against them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

# The reference algorithm (TensorFlow 2 style-transfer tutorial).
CONTENT_LAYER = "block5_conv2"
CONTENT_LAYERS = ("block5_conv2", "block4_conv2")  # the choices of `content_layer`; the paper uses conv4_2
STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
ADAM_BETA_1 = 0.99
ADAM_BETA_2 = 0.999  # Keras's default, which the reference keeps.
ADAM_EPSILON = 0.1

PRECISIONS = ("float32", "bfloat16")  # of the VGG arithmetic, chosen at export (or by nst-stylize)
INITS = ("content", "noise", "style")
OPTIMIZERS = ("adam", "lbfgs")
POOLINGS = ("max", "avg")
STYLE_LOSSES = ("gram", "w2", "sliced")  # see nst_model/losses.py
# The style losses an export holds unless nst-export --style-losses says otherwise: each of w2 and
# sliced adds its gradient to the graph, and together they triple the seconds the server spends
# preparing each new kind of call (docs/controls.md), so an operator opts in to them.
EXPORTED_STYLE_LOSSES = ("gram",)
# What `style_weight` is multiplied by for each style loss, so that the default weight gives each
# loss about the strength the reference's weight gives the Gram loss (docs/controls.md: how measured).
STYLE_LOSS_SCALES = {"gram": 1.0, "w2": 1.8e5, "sliced": 4.8e5}
# reference: the losses as they are, so a style shows as strongly as its features are large;
# normalized (the default, chosen from a contact sheet of the 12 shared pairs: docs/controls.md):
# each layer's term divided by the size of that style's own target at that layer.
STYLE_BALANCES = ("reference", "normalized")
NORMALIZED_SCALES = {"gram": 1.6e10, "w2": 2.8e10, "sliced": 6.8e10}  # the same, for style_balance=normalized
# The least size of a style's target per style layer by which style_balance=normalized divides: a flat or
# nearly flat style (one colour near VGG's mean, whose features are nearly zero) would otherwise be
# magnified 1e2 to 1e4 times over any painting. A quarter of the smallest size among the shared styles
# (Starry Night twice, The Scream, Shipwreck; the real weights, 512 px), so that no painting reaches it.
NORMALIZED_FLOORS = {
    "gram": (1.9e5, 4.8e7, 5.3e7, 1.4e10, 6.2e5),
    "w2": (3.5e2, 6.5e3, 1.0e4, 1.3e5, 1.6e3),
    "sliced": (3.3e2, 6.5e3, 1.0e4, 1.3e5, 1.6e3),
}
W2_ITERATIONS = 12  # Newton-Schulz iterations per matrix square root (crowsonkb's count)
W2_EPSILON = 1e-4  # added to the covariances' diagonals (crowsonkb's): keeps them invertible
SLICED_QUANTILES = 1024  # points of each style's quantile function per direction, carried in the state
# style: the style's colours; swap: the result's luminance with the content's colours (= preserve_colors);
# histogram: the style recoloured to the content's colour mean and covariance before the run;
# luminance: the run sees luminance only and the content's colours are put back at the end.
COLORS = ("style", "swap", "histogram", "luminance")
# Noise init, as jcjohnson's and anishathalye's: Gaussian noise around VGG's mean colour (the zero
# of its input space), its standard deviation a tenth of the content's (anishathalye's scale).
NOISE_SCALE = 0.1
# init=style needs a style with some texture: from a flat start (one colour) VGG's ReLUs are on or off alike
# everywhere, and 30 L-BFGS steps leave it flat (std 0.15 to 2 of 255 with the real weights at 384 px).
MIN_INIT_STYLE_STD = 2 / 255  # the start's standard deviation below which init=style is refused

# Limits enforced inside the graph, because the server checks nothing itself.
MAX_STEPS = 10_000  # per call; resume with the state inputs to go further
MIN_SIDE = 16  # VGG19 pools four times before block5_conv2: a side below 16 px has no features
MAX_SIDE = 2048  # longest side the optimisation runs at (memory grows with the pixel count)
MAX_INPUT_PIXELS = 50_000_000  # largest image accepted for decoding or resizing
MAX_BLOCKS_WALKED = 4096  # GIF blocks, JPEG marker segments read before decoding: a walk costs < 1 s
MAX_JPEG_SCAN_PIXELS = 1_000_000_000  # scans x pixels: libjpeg reads the image once per scan; 20 scans at 50 MP
MAX_STYLES = 8  # style images per request; each costs one VGG pass per call
STYLE_SCALE_RANGE = (0.1, 8.0)  # and the scaled style's sides must stay within MIN_SIDE..MAX_SIDE
# Region masks (nst_model/masks.py): a mask's distinct colours are its regions. Each region holds a
# guided Gram matrix per style layer, and at 512 px a region's features at the first layer are 50 MB.
MAX_REGIONS = 8
MASK_ASPECT_TOLERANCE = 0.02  # relative difference of the mask's and the content's height / width
KEEP_PHOTO = -1  # in mask_styles: the region gets no style term and stays close to the photograph


@dataclasses.dataclass(frozen=True)
class Limits:
    """The limits an export bakes into its graph. An operator lowers them (nst-export --max-side,
    --max-steps) to bound the memory and the duration of the worst request a replica admits: the
    stock server runs every call it has a thread for, and a 2048 px call needs about 10 GiB."""

    max_side: int = MAX_SIDE
    max_steps: int = MAX_STEPS

    def problem(self) -> str | None:
        """Why these limits cannot be exported, in one line; None if they can."""
        if not MIN_SIDE <= self.max_side <= MAX_SIDE:
            return f"--max-side must be between {MIN_SIDE} and {MAX_SIDE}; got {self.max_side}"
        if not 1 <= self.max_steps <= MAX_STEPS:
            return f"--max-steps must be between 1 and {MAX_STEPS}; got {self.max_steps}"
        return None

    def defaults(self) -> dict[str, int | float | bool | str | tuple[float, ...]]:
        """DEFAULTS, with steps and max_dim lowered to these limits where they exceed them, so that
        a request that leaves them out is one the export admits."""
        return {
            **DEFAULTS,
            "steps": min(DEFAULTS["steps"], self.max_steps),
            "max_dim": min(DEFAULTS["max_dim"], self.max_side),
        }

    def as_dict(self) -> dict[str, int]:
        """Every limit in force, as export_info.json and the `limits` signature report them."""
        return {
            "max_steps": self.max_steps,
            "min_side": MIN_SIDE,
            "max_side": self.max_side,
            "max_input_pixels": MAX_INPUT_PIXELS,
            "max_styles": MAX_STYLES,
        }


@dataclasses.dataclass(frozen=True)
class Option:
    """A tunable input: a signature input with a default, a CLI flag and a Python keyword.

    `dtype` is the signature's dtype; `length` makes it a vector (None: any length, the empty
    default meaning "not given"); `choices` lists the values a string option takes.
    """

    name: str
    dtype: str  # "int32", "float32", "bool" or "string"
    default: int | float | bool | str | tuple[float, ...]
    help: str
    length: int | None = 0  # 0: a scalar
    choices: tuple[str, ...] = ()
    low: float | None = None  # the range the graph accepts (numbers must also be finite); an int vector's, per value
    high: float | None = None
    positive: bool = False  # > low rather than >= low

    @property
    def is_vector(self) -> bool:
        return self.length != 0

    def problem(self, value: object) -> str | None:
        """Why the graph would refuse `value`, in its own words; None if it would not. Lets a command
        line refuse a bad option before it spends a minute building the model."""
        if self.dtype not in ("int32", "float32"):
            return None
        values = list(value) if self.is_vector else [value]
        if self.is_vector and self.dtype == "int32":
            if any(not self.low <= v <= self.high for v in values):
                return f"{self.name} values must be between {self.low:g} and {self.high:g}; got {_shown(tuple(values))}"
            return None
        if self.is_vector:
            if any(not math.isfinite(v) or v < 0 for v in values) or (values and sum(values) <= 0):
                return f"{self.name} must be finite, >= 0 and not all zero; got {_shown(tuple(values))}"
            return None
        v = values[0]
        shown = _shown(v)
        if self.dtype == "int32" and self.low is not None and not self.low <= v <= self.high:
            return f"{self.name} must be between {self.low:g} and {self.high:g}; got {shown}"
        if self.dtype == "float32" and self.high is not None and not (math.isfinite(v) and self.low <= v <= self.high):
            return f"{self.name} must be between {self.low:g} and {self.high:g}; got {shown}"
        if (
            self.dtype == "float32"
            and self.low is not None
            and not (math.isfinite(v) and (v > self.low if self.positive else v >= self.low))
        ):
            return f"{self.name} must be a finite number {'>' if self.positive else '>='} {self.low:g}; got {shown}"
        return None


OPTIONS: tuple[Option, ...] = (
    Option("steps", "int32", 300, f"optimisation steps, 0 to {MAX_STEPS}", low=0, high=MAX_STEPS),
    Option(
        "max_dim",
        "int32",
        512,
        f"longest side, in pixels, both images are resized to ({MIN_SIDE} to {MAX_SIDE})",
        low=MIN_SIDE,
        high=MAX_SIDE,
    ),
    Option("style_weight", "float32", 1e-2, "weight of the style loss", low=0),
    Option("content_weight", "float32", 1e4, "weight of the content loss", low=0),
    Option("tv_weight", "float32", 1e8, "weight of the total-variation (smoothness) loss", low=0),
    Option("learning_rate", "float32", 0.02, "Adam learning rate (L-BFGS chooses its own steps)", low=0, positive=True),
    Option(
        "optimizer",
        "string",
        "lbfgs",
        "lbfgs: projected L-BFGS, the fastest to a given quality (a step may evaluate the objective more than "
        "once); adam: the reference's optimiser",
        choices=OPTIMIZERS,
    ),
    Option(
        "style_scale",
        "float32",
        1.0,
        "the style is resized to this times the content's longest side: larger gives larger brush strokes "
        f"({STYLE_SCALE_RANGE[0]:g} to {STYLE_SCALE_RANGE[1]:g}; the scaled style's sides must stay within "
        f"{MIN_SIDE} to {MAX_SIDE} px)",
        low=STYLE_SCALE_RANGE[0],
        high=STYLE_SCALE_RANGE[1],
    ),
    Option(
        "style_weights",
        "float32",
        (),
        "blend weights of the style images, one each, normalised to sum 1; none: equal weights",
        length=None,
    ),
    Option(
        "style_loss",
        "string",
        "gram",
        "how the style is compared: gram (Gram matrices, the reference's), w2 (Wasserstein-2 between the features' "
        "Gaussians), sliced (sliced Wasserstein: sorted random projections, directions from seed)",
        choices=STYLE_LOSSES,
    ),
    Option(
        "style_balance",
        "string",
        "normalized",
        "reference: the losses' own scale, under which a style with larger features shows more strongly; "
        "normalized: each style layer's term relative to the style's own target there, so that one style_weight "
        "gives about the same strength whatever the style",
        choices=STYLE_BALANCES,
    ),
    Option(
        "colors",
        "string",
        "style",
        "style: the style's colours; swap: the content's colours put back after the run (as preserve_colors); "
        "histogram: the style recoloured to the content's colour statistics first; luminance: the run sees "
        "luminance only, the content's colours put back",
        choices=COLORS,
    ),
    Option("preserve_colors", "bool", False, "keep the content's colours after the run: the same as colors=swap"),
    Option("init", "string", "content", "the image the optimisation starts from", choices=INITS),
    Option("seed", "int32", 0, "seed of the noise init: the same seed and inputs give the same image"),
    Option(
        "pooling", "string", "max", "VGG pooling: max as VGG was trained, avg as the paper suggests", choices=POOLINGS
    ),
    Option(
        "style_layer_weights",
        "float32",
        (1.0,) * len(STYLE_LAYERS),
        f"relative weights of the style layers {', '.join(STYLE_LAYERS)}, normalised to sum 1",
        length=len(STYLE_LAYERS),
    ),
    Option("content_layer", "string", CONTENT_LAYER, "VGG layer the content loss compares", choices=CONTENT_LAYERS),
    Option(
        "mask_styles",
        "int32",
        (),
        f"with a mask: the style index that paints each of its regions (regions ordered by colour, darkest "
        f"first), {KEEP_PHOTO} to keep the region as the photo; none: region i takes style i",
        length=None,
        low=KEEP_PHOTO,
        high=MAX_STYLES - 1,
    ),
)
DEFAULTS: dict[str, int | float | bool | str | tuple[float, ...]] = {o.name: o.default for o in OPTIONS}
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
# The options `pixels` takes: all but max_dim, which only `decode` and serving_default use.
PIXELS_OPTIONS = tuple(o.name for o in OPTIONS if o.name not in ("steps", "max_dim"))


def add_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One command-line flag per option (--steps, --max-dim, ...), defaults from OPTIONS; those in
    `exclude` have flags of their own."""
    for o in OPTIONS:
        if o.name in exclude:
            continue
        flag = "--" + o.name.replace("_", "-")
        if o.dtype == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=o.default, help=o.help)
            continue
        kind = {"int32": int, "float32": float, "string": str}[o.dtype]
        parser.add_argument(
            flag,
            type=kind,
            default=o.default,
            nargs=(o.length or "+") if o.is_vector else None,
            choices=o.choices or None,
            metavar="W" if o.is_vector else None,
            help=f"{o.help} (default {_shown(o.default)})",
        )


def problems(values: dict[str, object]) -> list[str]:
    """What the graph would refuse among these option values, one line each."""
    return [p for name, value in values.items() if (p := BY_NAME[name].problem(value))]


def from_flags(args: argparse.Namespace) -> dict[str, object]:
    return {o.name: tuple(v) if o.is_vector else v for o in OPTIONS if (v := getattr(args, o.name)) is not None}


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return " ".join(map(_shown, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)
