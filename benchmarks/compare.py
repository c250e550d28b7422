"""Seconds per step of two or more exported models, their calls taking turns in one process.

An A/B of a change: export each commit (`nst-export`, or `nst_export.exporter.export` from a
`git archive` of it), then time them here. Each model runs the `pixels` signature through the
Session, from the state of a run after `--from-step` steps (its targets carried, as a chunked run
carries them), once per optimiser; every repeat times each model in turn, so a slow spell of the
machine hits all of them alike. A step is (t(N steps) - t(0 steps)) / N; the medians are printed.
With `--mask`, each model and optimiser is also timed with that region mask (the cost of masks).

    python benchmarks/compare.py --weights ../shared/weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        --models /tmp/before/1 /tmp/after/1 --size 512 --steps 5 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="exported SavedModel version folders")
    parser.add_argument("--weights", help="the VGG19 .h5 file; the photos are read beside it ($NST_VGG19_WEIGHTS)")
    parser.add_argument("--size", type=int, default=512, help="longest side (512)")
    parser.add_argument("--steps", type=int, default=5, help="steps in each timed call (5)")
    parser.add_argument("--repeats", type=int, default=5, help="timings per model and optimiser (5)")
    parser.add_argument("--from-step", type=int, default=25, help="steps run before those timed (25)")
    parser.add_argument("--optimizers", nargs="+", default=["lbfgs", "adam"], choices=("lbfgs", "adam"))
    parser.add_argument("--mask", type=pathlib.Path, help="also time each with this region mask of the content")
    parser.add_argument("--mask-styles", default="0,0", help="the mask's styles, of the one style (0,0)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import numpy as np
    from midrun import machine_line, midrun_feeds, photos  # this folder's

    from nst_model.session import ServingSession

    _, content, style = photos(parser, args.weights)
    machine_line()
    variants = {"": {}}
    if args.mask:
        mask_styles = np.array([-1 if s == "-" else int(s) for s in args.mask_styles.split(",")], np.int32)
        variants["masked "] = {"mask": np.array(args.mask.read_bytes(), object), "mask_styles": mask_styles}
    runs = []  # (label, session, feeds, seconds per step of each repeat)
    for model in args.models:
        session = ServingSession(model)
        for optimizer in args.optimizers:
            for variant, extra in variants.items():
                feeds, loss, _ = midrun_feeds(session, content, style, args.size, optimizer, args.from_step, extra)
                print(f"{model} {variant}{optimizer}: loss after {args.from_step} steps {loss:.6e}")
                runs.append((f"{model} {variant}{optimizer}", session, feeds, []))

    for _ in range(args.repeats):
        for _, session, feeds, seconds in runs:

            def call(steps: int, session=session, feeds=feeds) -> float:
                started = time.perf_counter()
                session.run("pixels", {**feeds, "steps": np.int32(steps)}, ["loss", "evaluations"])
                return time.perf_counter() - started

            seconds.append((call(args.steps) - call(0)) / args.steps)
    for label, _, _, seconds in runs:
        print(f"{label}: {statistics.median(seconds):.3f} s per step  ({' '.join(f'{s:.3f}' for s in seconds)})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    sys.exit(main())
