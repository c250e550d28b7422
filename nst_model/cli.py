"""nst-stylize: style transfer of two images in this process, no server needed."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from nst_model.options import PRECISIONS, add_flags, from_flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nst-stylize", description="Paint CONTENT in the style of STYLE (Gatys et al.), in this process."
    )
    parser.add_argument("content", help="content image (JPEG, PNG, GIF or BMP)")
    parser.add_argument("style", nargs="+", help="style image (JPEG, PNG, GIF or BMP); several are blended")
    parser.add_argument("-o", "--output", default="stylized.png", help="output PNG (default stylized.png)")
    add_flags(parser)
    parser.add_argument("--chunk", type=int, default=25, help="steps between progress updates; 0: one call")
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
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter; errors still show
    import tensorflow as tf

    from nst_model import runner
    from nst_model.model import StyleTransfer
    from nst_model.options import CONTENT_LAYER
    from nst_model.vgg import WeightsError, load_weights, resolve_precision

    try:
        if args.model:
            stylizer = runner.load(args.model)
        else:
            weights, _, _ = load_weights(args.weights, CONTENT_LAYER)
            model = StyleTransfer(weights, resolve_precision(args.precision))
            stylizer = runner.Stylizer(model.decode, model.pixels)
        result = stylizer.run(args.content, args.style, chunk=args.chunk, progress=not args.quiet, **from_flags(args))
    except (WeightsError, FileNotFoundError, OSError, ValueError) as e:
        parser.exit(2, f"nst-stylize: error: {e}\n")
    except tf.errors.OpError as e:
        parser.exit(2, f"nst-stylize: error: {runner.error_message(e)}\n")
    pathlib.Path(args.output).write_bytes(result.png)
    losses = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
    print(f"wrote {args.output} ({result.image.width}x{result.image.height}); {losses}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
