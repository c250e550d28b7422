"""Command-line flags that nst-client and nst-stylize share: one definition, one help text."""

from __future__ import annotations

import argparse

from .chunked import scales_problem
from .settings import DEFAULT_SCALES

KEEP_PHOTO = -1  # mask_styles' value for a region left as the photo (the model's KEEP_PHOTO)


def _scales(text: str) -> tuple[int, ...]:
    """Comma-separated longest sides, checked here for all that does not depend on max_dim."""
    try:
        scales = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers of pixels; got {text!r}") from None
    if problem := scales_problem(scales, max(scales, default=0)):
        raise argparse.ArgumentTypeError(problem.removeprefix("scales "))
    return scales


def _mask_styles(text: str) -> tuple[int, ...]:
    """Comma-separated style indices, one per mask region; "-" keeps a region as the photo."""
    try:
        return tuple(KEEP_PHOTO if part.strip() == "-" else int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated style indices (0, 1, ...; - keeps the photo); got {text!r}"
        ) from None


def add_mask_flags(parser: argparse.ArgumentParser) -> None:
    """--mask and --mask-styles, one definition for nst-client and nst-stylize."""
    parser.add_argument(
        "--mask",
        metavar="IMAGE",
        help="region map the size of CONTENT (any aspect-preserving size): each flat colour is a region, painted by "
        "its own style (PNG; docs/controls.md)",
    )
    parser.add_argument(
        "--mask-styles",
        type=_mask_styles,
        metavar="I,I,...",
        help="with --mask, the style of each region in colour order (darkest grey first; for colours by red, then "
        "green, then blue), - to keep a region as the photo, e.g. 1,-,0 (default: region i takes style i)",
    )


def add_scales_flag(parser: argparse.ArgumentParser) -> None:
    """--scales, one flag and help for nst-client and nst-stylize."""
    parser.add_argument(
        "--scales",
        type=_scales,
        default=DEFAULT_SCALES,
        metavar="S,S,...",
        help="coarse-to-fine: run first at these longest sides, e.g. 256,512 before --max-dim 1024, each scale "
        "starting from the last one's image upsampled; --steps is the total, the first scale gets two shares "
        "and each later one one share (default: off, one scale)",
    )
