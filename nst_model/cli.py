"""nst-stylize: style transfer of two images in this process, no server needed.

A program on top of the run layer (nst_client's chunk loop, images, errors, progress): the graph
modules of nst_model import nothing from here or from nst_client.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import TextIO

from nst_client.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK
from nst_client.flags import add_mask_flags, add_scales_flag
from nst_client.output import checkpoint_path, prepare_output
from nst_client.settings import DEFAULT_CHUNK
from nst_model.options import PRECISIONS, add_flags, from_flags, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nst-stylize", description="Paint CONTENT in the style of STYLE (Gatys et al.), in this process."
    )
    parser.add_argument("content", help="content image (any format Pillow reads)")
    parser.add_argument("style", nargs="+", help="style image (any format Pillow reads); several are blended")
    parser.add_argument("-o", "--output", default="stylized.png", help="output PNG (default stylized.png)")
    add_flags(parser, exclude=("mask_styles",))
    add_mask_flags(parser)
    parser.add_argument(
        "--chunk", type=int, default=DEFAULT_CHUNK, help=f"steps per call (default {DEFAULT_CHUNK}); 0: one call"
    )
    add_scales_flag(parser)
    parser.add_argument(
        "--save-every",
        type=int,
        default=0,
        metavar="N",
        help="also write the image every N steps, as OUTPUT_0100.png and so on (default: only at the end)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", help="VGG19 .h5 weights (default: $NST_VGG19_WEIGHTS, else Keras download)")
    source.add_argument("--model", help="an exported SavedModel version folder to run instead, e.g. models/nst/1")
    parser.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="VGG arithmetic without --model; auto (default): bfloat16 where the CPU has AMX or AVX512-BF16 "
        "or on a GPU, several times faster; else float32",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    options = from_flags(args)
    for problem in problems(options):
        parser.error(problem)
    if args.mask_styles is not None and args.mask is None:
        parser.error("--mask-styles needs --mask")
    if args.chunk < 0 or args.save_every < 0:
        parser.error("--chunk and --save-every must be >= 0")
    from nst_client.chunked import scales_problem

    if problem := scales_problem(args.scales, options["max_dim"]):
        parser.error(problem)
    output = pathlib.Path(args.output)
    if problem := prepare_output(output):
        parser.exit(EXIT_BAD_INPUT, f"nst-stylize: error: {problem}\n")

    from nst_client.quiet import hidden_stderr, quiet_tensorflow

    quiet_tensorflow(args.verbose)
    # TensorFlow's own log lines go nowhere (unless --verbose); the bar and the outcome to the terminal.
    with hidden_stderr(hidden=not args.verbose) as terminal:
        outcome, code = run(args, options, output, terminal)
    print(outcome, file=sys.stderr)
    return code


def run(args: argparse.Namespace, options: dict, output: pathlib.Path, terminal: TextIO) -> tuple[str, int]:
    """Build or load the model and run it: (the line to print, the exit code)."""
    import tensorflow as tf
    import tqdm

    from nst_client import images
    from nst_client.chunked import Interrupted
    from nst_client.errors import ClientError, clean_message
    from nst_client.output import Checkpoints, save
    from nst_client.progress import ProgressBar
    from nst_model.model import StyleTransfer
    from nst_model.runner import Stylizer, load
    from nst_model.signatures import Servable
    from nst_model.vgg import WeightsError, load_weights, resolve_precision

    # A checkpoint that cannot be written is a warning above the bar; only the final output decides the exit.
    checkpoints = Checkpoints(output, lambda line: tqdm.tqdm.write(f"nst-stylize: warning: {line}", file=terminal))

    try:
        # The images first: a missing or unreadable one is reported before a minute of model building.
        content = images.encode(args.content, "content")
        styles = [images.encode(style, "style") for style in args.style]
        mask = None if args.mask is None else images.encode(args.mask, "mask")
        if not args.quiet:
            print("setting up: loading the model ...", file=terminal, flush=True)
        with ProgressBar(disable=args.quiet, file=terminal) as bar:
            if args.model:
                stylizer = load(args.model)
            else:
                # The graph holds the one style loss this run uses: each other would only slow its set-up.
                precision = resolve_precision(args.precision)
                model = StyleTransfer(load_weights(args.weights)[0], precision, (options["style_loss"],))
                stylizer = Stylizer.from_module(Servable(model))
            result = stylizer.run(
                content,
                styles,
                chunk=args.chunk,
                scales=args.scales,
                progress=bar,
                checkpoint=checkpoints if args.save_every else None,
                checkpoint_every=args.save_every,
                mask=mask,
                **options,
            )
    except (WeightsError, ClientError, OSError) as e:
        return f"nst-stylize: error: {e}", EXIT_BAD_INPUT
    except tf.errors.OpError as e:
        return f"nst-stylize: error: {clean_message(e.message)}", EXIT_BAD_INPUT
    except Interrupted as e:
        where = "no step had finished"
        if e.png is not None:
            where = save(checkpoint_path(output, e.done), e.png).outcome(f"the image after {e.done} steps")
        return f"nst-stylize: interrupted; {where}", EXIT_INTERRUPTED
    except KeyboardInterrupt:
        return "nst-stylize: interrupted before the run started", EXIT_INTERRUPTED
    saved = save(output, result.png)
    if saved.problem:  # the image is elsewhere (or lost): said in one line, and the exit is not 0
        return f"nst-stylize: error: {saved.outcome('the image')}", EXIT_BAD_INPUT
    losses = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
    return f"wrote {output} ({result.image.width}x{result.image.height}); {losses}", EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
