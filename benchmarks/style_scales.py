"""Derive NORMALIZED_SCALE: what style_weight is multiplied by under style_balance=normalized.

    python benchmarks/style_scales.py CONTENT [CONTENT ...] --styles STYLE [STYLE ...] \\
        --weights ../shared/weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 [--max-dim 512]

The reference's weights balance the Gram loss against the content and TV losses; the normalized
balance keeps that balance for an average style when its style term, at the image a default run
starts from (the content), is as large on average as the reference's term is there. For every
content/style pair this prints both terms at the content image (weight 1, one call of 0 steps) and
their ratio; the scale is the geometric mean of the ratios, which no single style dominates. The
spread of each column across styles shows what the normalized balance evens out.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("contents", nargs="+", type=pathlib.Path)
    parser.add_argument("--styles", nargs="+", type=pathlib.Path, required=True)
    parser.add_argument("--weights", help="VGG19 .h5 weights (default: $NST_VGG19_WEIGHTS)")
    parser.add_argument("--max-dim", type=int, default=512)
    args = parser.parse_args(argv)

    from nst_model.model import StyleTransfer
    from nst_model.options import NORMALIZED_SCALE
    from nst_model.runner import Stylizer
    from nst_model.signatures import Servable
    from nst_model.vgg import load_weights

    stylizer = Stylizer.from_module(Servable(StyleTransfer(load_weights(args.weights)[0])))
    scales = {"reference": 1.0, "normalized": NORMALIZED_SCALE}
    terms: dict[str, list[float]] = {balance: [] for balance in scales}
    print(f"style term at the content image, style_weight 1, {args.max_dim} px")
    print(f"{'content':<16} {'style':<22} {'reference':>10} {'normalized':>10} {'ratio':>10}")
    for content in args.contents:
        for style in args.styles:
            for balance, scale in scales.items():
                options = {"style_balance": balance, "style_weight": 1.0, "max_dim": args.max_dim}
                result = stylizer.run(content, style, steps=0, progress=False, **options)
                terms[balance].append(result.losses["style_loss"] / scale)
            reference, normalized = terms["reference"][-1], terms["normalized"][-1]
            ratio = reference / normalized
            print(f"{content.name:<16} {style.name:<22} {reference:10.4g} {normalized:10.4g} {ratio:10.4g}")
    ratios = np.array(terms["reference"]) / np.array(terms["normalized"])
    print(f"scale {math.exp(np.log(ratios).mean()):.4g} (geometric mean of the ratios)")
    for balance, values in terms.items():
        print(f"{balance}: the style term spans x{max(values) / min(values):.2f} across the pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
