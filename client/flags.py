"""Command-line flags that nst-client and nst-stylize share: one definition, one help text."""

from __future__ import annotations

import argparse

from .chunked import scales_problem
from .settings import DEFAULT_SCALES


def _scales(text: str) -> tuple[int, ...]:
    """Comma-separated longest sides, checked here for all that does not depend on max_dim."""
    try:
        scales = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers of pixels; got {text!r}") from None
    if problem := scales_problem(scales, max(scales, default=0)):
        raise argparse.ArgumentTypeError(problem.removeprefix("scales "))
    return scales


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
