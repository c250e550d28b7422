"""Derive STYLE_LOSS_SCALES and NORMALIZED_SCALES: what style_weight is multiplied by for each
style loss, in each style balance.

    python benchmarks/style_scales.py CONTENT [CONTENT ...] --styles STYLE [STYLE ...] \\
        --weights ../shared/weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 [--max-dim 512]

The reference's weights balance the Gram loss against the content and TV losses; a new loss gets
the same balance when its style term, at the image a default run starts from (the content), is
as large as the Gram term is there. For every content/style pair this prints each loss's style
term at the content image (weight 1, one call of 0 steps) and its ratio to the reference Gram
term; a scale is the geometric mean of its ratios over all pairs, which no single style dominates.
Under style_balance=normalized the ratios' spread across styles shows what the balance evens out.
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
    from nst_model.options import NORMALIZED_SCALES, STYLE_BALANCES, STYLE_LOSS_SCALES, STYLE_LOSSES
    from nst_model.runner import Stylizer
    from nst_model.signatures import Servable
    from nst_model.vgg import load_weights

    stylizer = Stylizer.from_module(Servable(StyleTransfer(load_weights(args.weights)[0], style_losses=STYLE_LOSSES)))
    kinds = [(loss, balance) for balance in STYLE_BALANCES for loss in STYLE_LOSSES]
    scales = {"reference": STYLE_LOSS_SCALES, "normalized": NORMALIZED_SCALES}
    ratios: dict[tuple[str, str], list[float]] = {kind: [] for kind in kinds}
    print(f"style term at the content image, style_weight 1, {args.max_dim} px; ratio: reference gram / term")
    print(
        f"{'content':<16} {'style':<22}"
        + "".join(f" {loss[:3] + '/' + balance[:4]:>10} {'ratio':>9}" for loss, balance in kinds)
    )
    for content in args.contents:
        for style in args.styles:
            terms = {}
            for loss, balance in kinds:
                options = {"style_loss": loss, "style_balance": balance, "style_weight": 1.0}
                result = stylizer.run(content, style, steps=0, max_dim=args.max_dim, progress=False, **options)
                terms[loss, balance] = result.losses["style_loss"] / scales[balance][loss]
            row = ""
            for kind in kinds:
                ratios[kind].append(terms["gram", "reference"] / terms[kind])
                row += f" {terms[kind]:10.4g} {ratios[kind][-1]:9.4g}"
            print(f"{content.name:<16} {style.name:<22}" + row, flush=True)
    for loss, balance in kinds:
        values = np.array(ratios[loss, balance])
        mean = math.exp(np.log(values).mean())
        spread = values.max() / values.min()
        print(
            f"{loss} {balance}: scale {mean:.4g} (geometric mean; ratios {values.min():.4g} to "
            f"{values.max():.4g}, x{spread:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
