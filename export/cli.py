"""nst-export: write a new version of the servable SavedModel, then check it the server's way."""

from __future__ import annotations

import argparse
import sys
import time

from nst_client.errors import EXIT_BAD_INPUT, EXIT_OK
from nst_client.quiet import hidden_stderr, quiet_tensorflow
from nst_model.options import EXPORTED_STYLE_LOSSES, MAX_SIDE, MAX_STEPS, MIN_SIDE, PRECISIONS, STYLE_LOSSES, Limits


def style_losses(text: str) -> tuple[str, ...]:
    """--style-losses: comma-separated names among STYLE_LOSSES."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in STYLE_LOSSES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"give style losses among {', '.join(STYLE_LOSSES)}, comma-separated; got {text!r}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nst-export", description="Export the servable style-transfer SavedModel.")
    parser.add_argument(
        "--model-dir", default="models/nst", help="the model's folder; its name is the served model name (models/nst)"
    )
    parser.add_argument("--version", type=int, help="version number (default: one past the highest existing)")
    parser.add_argument("--weights", help="VGG19 .h5 weights (default: $NST_VGG19_WEIGHTS, else the Keras download)")
    parser.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="float32",
        help="VGG arithmetic: bfloat16 is several times faster where the CPU has AMX/AVX512-BF16 or on GPUs, "
        "and slower elsewhere; auto: bfloat16 if this machine has them (export on the serving hardware); "
        "default float32",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=MAX_SIDE,
        help="the longest side a request may ask for, in px: bounds a call's memory, see docs/deploy.md "
        f"({MIN_SIDE} to {MAX_SIDE}; default {MAX_SIDE})",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=MAX_STEPS,
        help=f"the most steps one call may run: bounds a call's duration (1 to {MAX_STEPS}; default {MAX_STEPS})",
    )
    parser.add_argument(
        "--style-losses",
        type=style_losses,
        default=EXPORTED_STYLE_LOSSES,
        metavar="NAMES",
        help=f"the style losses requests may choose, comma-separated among {','.join(STYLE_LOSSES)} "
        f"(default {','.join(EXPORTED_STYLE_LOSSES)}): each adds to the seconds the server takes to prepare "
        "a new kind of call, see docs/controls.md",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    if args.version is not None and args.version < 1:
        parser.error("--version must be a positive integer")
    limits = Limits(max_side=args.max_side, max_steps=args.max_steps)
    if problem := limits.problem():
        parser.error(problem)
    quiet_tensorflow(args.verbose)
    started = time.perf_counter()
    problem = None
    with hidden_stderr(hidden=not args.verbose):
        from nst_export.exporter import describe, export
        from nst_model.vgg import WeightsError, resolve_precision

        try:
            precision = resolve_precision(args.precision)
            path = export(args.model_dir, args.version, args.weights, precision, limits, args.style_losses)
            description = describe(path)
        except (WeightsError, FileExistsError) as e:
            problem = e
    if problem:
        parser.exit(EXIT_BAD_INPUT, f"nst-export: error: {problem}\n")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(description)
    print(
        f"exported {path} ({size / 2**20:.1f} MiB) in {time.perf_counter() - started:.1f} s; "
        "checked through the TF1 Session loader with its warmup requests"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
