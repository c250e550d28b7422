"""A contact sheet of one content/style pair across the controls, for a person to look at.

    python scripts/contact_sheet.py CONTENT STYLE [STYLE2] -o sheet.png \\
        --weights ../shared/weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 [--max-dim 256] [--steps 300]

e.g. with ../shared/images/content/tubingen.jpg, ../shared/images/style/starry_night.jpg and
../shared/images/style/the_scream.jpg. One tile per setting, labelled: the defaults, style scale 0.5
and 2, original colours, noise init, average pooling, content layer block4_conv2 and, with a second
style, blends 7:3 and 3:7; then the style losses (w2, sliced) and balances (reference, normalized), and the
colour methods (histogram, luminance). `--only` picks some tiles by label; `--set NAME=VALUE` changes
an option for every tile (e.g. --set style_weight=0.1); `--reference IMAGE` adds another
implementation's result (../shared/images/reference/) beside them. Each tile is one run of the model in this process
(`--model DIR` runs an exported SavedModel instead); the CPU takes minutes per tile at 512 px.
"""

from __future__ import annotations

import argparse
import ast
import os
import pathlib
import sys
import time

import PIL.Image
import PIL.ImageDraw

Variant = tuple[str, dict[str, object]]
SINGLE_STYLE: tuple[Variant, ...] = (
    ("defaults", {}),
    ("style_scale 0.5", {"style_scale": 0.5}),
    ("style_scale 2", {"style_scale": 2.0}),
    ("preserve_colors", {"preserve_colors": True}),
    ("init noise", {"init": "noise"}),
    ("pooling avg", {"pooling": "avg"}),
    ("content_layer block4_conv2", {"content_layer": "block4_conv2"}),
    ("gram reference", {"style_balance": "reference"}),  # the tutorial's balance
    ("gram normalized", {"style_balance": "normalized"}),
    ("w2 reference", {"style_loss": "w2", "style_balance": "reference"}),
    ("w2 normalized", {"style_loss": "w2", "style_balance": "normalized"}),
    ("sliced reference", {"style_loss": "sliced", "style_balance": "reference"}),
    ("sliced normalized", {"style_loss": "sliced", "style_balance": "normalized"}),
    ("colors histogram", {"colors": "histogram"}),
    ("colors luminance", {"colors": "luminance"}),
)
TWO_STYLES: tuple[Variant, ...] = (
    ("blend 7:3", {"style_weights": (7.0, 3.0)}),
    ("blend 3:7", {"style_weights": (3.0, 7.0)}),
)
LABEL_HEIGHT = 14


def variants(two_styles: bool, only: list[str] | None) -> list[Variant]:
    chosen = [*SINGLE_STYLE, *(TWO_STYLES if two_styles else ())]
    return [v for v in chosen if not only or v[0] in only]


def tile(image: PIL.Image.Image, label: str, height: int) -> PIL.Image.Image:
    """`image` scaled to `height` with `label` written above it."""
    image = image.convert("RGB")
    image = image.resize((max(1, round(image.width * height / image.height)), height), PIL.Image.LANCZOS)
    framed = PIL.Image.new("RGB", (image.width, height + LABEL_HEIGHT), "white")
    framed.paste(image, (0, LABEL_HEIGHT))
    PIL.ImageDraw.Draw(framed).text((2, 1), label, fill="black")
    return framed


def sheet(tiles: list[PIL.Image.Image], columns: int) -> PIL.Image.Image:
    width = max(t.width for t in tiles)
    height = max(t.height for t in tiles)
    rows = -(-len(tiles) // columns)
    out = PIL.Image.new("RGB", (columns * width, rows * height), "white")
    for i, t in enumerate(tiles):
        out.paste(t, ((i % columns) * width, (i // columns) * height))
    return out


def parse_set(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value  # a bare string such as init=style


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("content")
    parser.add_argument("styles", nargs="+", metavar="style", help="one or two style images")
    parser.add_argument("-o", "--output", default="contact_sheet.png")
    parser.add_argument("--max-dim", type=int, default=256, help="longest side of each result (default 256)")
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps per tile (default 300)")
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--only", action="append", help="a tile label to render (repeatable; default all)")
    parser.add_argument("--set", action="append", default=[], type=parse_set, help="NAME=VALUE for every tile")
    parser.add_argument("--reference", action="append", default=[], help="another implementation's output, as a tile")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="VGG arithmetic")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", help="VGG19 .h5 weights (default: $NST_VGG19_WEIGHTS)")
    source.add_argument("--model", help="an exported SavedModel version folder")
    args = parser.parse_args(argv)
    if len(args.styles) > 2:
        parser.error("give one or two style images")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from nst_model.model import StyleTransfer
    from nst_model.runner import Stylizer, load
    from nst_model.signatures import Servable
    from nst_model.vgg import load_weights

    common = {"max_dim": args.max_dim, "steps": args.steps, **dict(args.set)}
    chosen = variants(len(args.styles) == 2, args.only)
    if args.model:
        stylizer = load(args.model)
    else:  # a graph holding the style losses the tiles use, and no other
        used = tuple({o.get("style_loss", common.get("style_loss", "gram")) for _, o in chosen})
        model = StyleTransfer(load_weights(args.weights)[0], args.precision, used)
        stylizer = Stylizer.from_module(Servable(model))
    height = args.max_dim
    shown = (args.content, *args.styles, *args.reference)
    tiles = [tile(PIL.Image.open(p), pathlib.Path(p).name, height) for p in shown]
    for label, options in chosen:
        started = time.perf_counter()
        styles = args.styles if "style_weights" in options else args.styles[:1]
        result = stylizer.run(args.content, styles, chunk=0, progress=False, **{**common, **options})
        losses = f"style {result.losses['style_loss']:.3g} content {result.losses['content_loss']:.3g}"
        print(f"{label}: {losses} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        tiles.append(tile(result.image, label, height))
    sheet(tiles, args.columns).save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
