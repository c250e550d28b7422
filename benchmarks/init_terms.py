"""Issue 25's step-count levers 3 and 4, on an exported model through the TF1 Session:

- the starting image: the served default (L-BFGS) from the content, against the same from the
  content recoloured to the style's colour mean and covariance (the histogram colour method's map,
  the other way round): steps to reach the objective of N Adam steps (the reference's algorithm
  and objective, run by the same export: the Keras reference is too slow for a loaded machine),
  and steps to reach the default arm's objective at given steps;
- where the remaining gap lies: the objective's terms (style per layer, content, TV) of the
  default arm's image at given steps, and of the Adam run's final image.

Both arms start from a state holding only the image (no L-BFGS history), as a coarse-to-fine
run's later scale does, and run calls of one step, reading the loss output after each, so a step
count is exact. The terms are computed outside the graph in float32 with tests/reference.py's
Keras VGG19 and targets (the tutorial objective), so they sum to `Reference.loss`.

    python benchmarks/init_terms.py MODEL_DIR --size 256 --reference-steps 1000 \
        --pairs tubingen:starry_night tubingen:the_scream golden_gate:starry_night --terms-at 50 160 324
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from midrun import machine_line  # this folder's
from workers import reference_class

from nst_client import chunked
from nst_model.colors import match_histogram
from nst_model.session import ServingSession

ARMS = ("content", "colors")  # the default start, and the content in the style's colours
STATE = chunked.state_names("lbfgs")


def terms(reference, image: np.ndarray) -> dict[str, float]:
    """The tutorial objective's terms of `image`, each weighted as in the sum: style per layer,
    content, TV, and their total."""
    style_outputs, content_outputs = reference.extract(tf.constant(image))
    style_weight, content_weight, tv_weight = reference.weights
    layers = len(style_outputs)
    out = {
        f"style {k + 1}": float(tf.reduce_mean((o - t) ** 2)) * style_weight / layers
        for k, (o, t) in enumerate(zip(style_outputs, reference.style_targets, strict=True))
    }
    out["content"] = float(tf.reduce_mean((content_outputs[0] - reference.content_targets[0]) ** 2)) * content_weight
    x_var, y_var = image[:, :, 1:, :] - image[:, :, :-1, :], image[:, 1:, :, :] - image[:, :-1, :, :]
    out["tv"] = tv_weight * (float(np.mean(x_var**2)) + float(np.mean(y_var**2)))
    out["total"] = float(reference.loss(tf.constant(image))[0])
    return out


def adam(session: ServingSession, feeds: dict, steps: int, chunk: int = 100) -> tuple[np.ndarray, float]:
    """(image, loss) after `steps` Adam steps from the content, in calls of `chunk` steps."""
    names, state, out = chunked.state_names("adam"), {}, {}
    for done in range(0, steps, chunk):
        todo = np.int32(min(chunk, steps - done))
        out = session.run(
            "pixels", {**feeds, **state, "optimizer": np.array(b"adam", object), "steps": todo}, ["loss", *names]
        )
        state = {k: out[k] for k in names}
    return out["image"], float(out["loss"])


def run_arm(
    session: ServingSession, feeds: dict, start: np.ndarray, target: float, max_steps: int, keep: set[int], least: int
) -> dict:
    """L-BFGS from `start` in calls of one step until the loss <= target and `least` steps and
    every step in `keep` are done (or max_steps): the loss after each step and the images at the
    steps in `keep`."""
    state, losses, images, reached = {"image": start}, [], {}, None
    started = time.perf_counter()
    while len(losses) < max_steps and (reached is None or len(losses) < max(keep | {least}, default=0)):
        out = session.run("pixels", {**feeds, **state, "steps": np.int32(1)}, ["loss", *STATE])
        state = {k: out[k] for k in STATE}
        losses.append(float(out["loss"]))
        if reached is None and losses[-1] <= target:
            reached = len(losses)
        if len(losses) in keep:
            images[len(losses)] = out["image"]
    return {"steps": reached, "seconds": time.perf_counter() - started, "losses": losses, "images": images}


def matched(default: list[float], other: list[float]) -> dict[int, int | None]:
    """For S in 25, 50, 100, ...: the steps `other` takes to a loss <= `default`'s at step S."""
    found = {}
    for step in (25, 50, 100, 150, 200, 250, 300, 324, 400, 500):
        if step <= len(default):
            found[step] = next((i + 1 for i, loss in enumerate(other) if loss <= default[step - 1]), None)
    return found


def terms_table(row: dict) -> str:
    """The content arm's terms at each kept step, the Adam image's, and each step's gap to them
    (its term less the Adam image's) as a share of the whole gap."""
    reference = row["reference_terms"]
    names = list(reference)
    lines = [" ".join(["image".ljust(22), *(n.rjust(10) for n in names)])]
    rows = {
        "start": row["content"]["start_terms"],
        **{f"L-BFGS step {k}": v for k, v in row["content"]["terms"].items()},
    }
    for label, values in {**rows, f"Adam {row['reference_steps']}": reference}.items():
        lines.append(" ".join([label.ljust(22), *(f"{values[n]:10.4g}" for n in names)]))
    for label, values in rows.items():
        gap = values["total"] - reference["total"]
        shares = (f"{(values[n] - reference[n]) / gap:10.1%}" for n in names)
        lines.append(" ".join([f"gap share, {label}".ljust(22), *shares]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("model", help="an exported version folder (nst-export), e.g. /tmp/m/1")
    add("--weights", default=os.environ.get("NST_VGG19_WEIGHTS"), help="VGG19 .h5 ($NST_VGG19_WEIGHTS)")
    add("--size", type=int, default=256, help="longest side (256)")
    add("--reference-steps", type=int, default=1000, help="Adam steps of the reference that set the target (1000)")
    add("--rtol", type=float, default=1e-3, help="reached when loss <= target x (1 + rtol), as benchmark.py (1e-3)")
    add("--max-steps", type=int, default=600, help="an arm stops here if it has not reached the target (600)")
    add("--pairs", nargs="+", default=["tubingen:starry_night"], help="CONTENT:STYLE names in the images folder")
    add("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="starting images to compare (both)")
    add("--least", type=int, default=0, help="run each arm at least this many steps (0)")
    add("--terms-at", type=int, nargs="*", default=[], help="steps of the first pair's content arm to break down")
    add("--json", default="benchmarks/results/init_terms.json", help="where to write every figure")
    args = parser.parse_args(argv)
    if not args.weights:
        parser.error("give --weights or set NST_VGG19_WEIGHTS (the photos come from the images folder beside it)")
    images = pathlib.Path(args.weights).resolve().parents[1] / "images"
    results = {"command": " ".join(sys.argv), "machine": machine_line(), "load_before": os.getloadavg(), "pairs": {}}
    session = ServingSession(args.model)
    Reference = reference_class()
    for index, pair in enumerate(args.pairs):
        content_name, style_name = pair.split(":")
        pixels = {
            name: session.run(
                "decode",
                {
                    "image": np.array((images / name / f"{file}.jpg").read_bytes(), object),
                    "max_dim": np.int32(args.size),
                },
            )["pixels"]
            for name, file in (("content", content_name), ("style", style_name))
        }
        reference = Reference(args.weights, pixels["content"], pixels["style"])  # the terms' yardstick
        # The first call computes the targets from the style, which later calls carry.
        first = session.run("pixels", {**pixels, "style_balance": np.array(b"reference", object), "steps": np.int32(0)})
        feeds = {"content": pixels["content"], "style_balance": np.array(b"reference", object)}
        feeds.update({k: first[k] for k in chunked.TARGETS})
        started = time.perf_counter()
        final, adam_loss = adam(session, feeds, args.reference_steps)
        row = {
            "reference_steps": args.reference_steps,
            "reference_s": time.perf_counter() - started,
            "reference_loss": adam_loss,
            "reference_terms": terms(reference, final),
        }
        target = adam_loss * (1 + args.rtol)
        print(
            f"{pair} at {args.size} px: Adam {args.reference_steps} steps {row['reference_s']:.0f} s, loss "
            f"{adam_loss:.4e} (float32 terms' total {row['reference_terms']['total']:.4e})",
            flush=True,
        )
        starts = {
            "content": pixels["content"],
            "colors": match_histogram(tf.constant(pixels["content"]), tf.constant(pixels["style"])).numpy(),
        }
        for arm in args.arms:
            keep = set(args.terms_at) if index == 0 and arm == "content" else set()
            ran = run_arm(session, feeds, starts[arm], target, args.max_steps, keep, args.least)
            ran["start_terms"] = terms(reference, starts[arm])
            ran["terms"] = {step: terms(reference, image) for step, image in sorted(ran.pop("images").items())}
            row[arm] = ran
            print(
                f"  {arm:8s} start {ran['start_terms']['total']:.4e}: reached at step {ran['steps']} "
                f"({ran['seconds']:.0f} s for {len(ran['losses'])} steps)",
                flush=True,
            )
        if set(ARMS) <= set(row):
            row["matched"] = matched(row["content"]["losses"], row["colors"]["losses"])
            print(f"  colors' steps to the content arm's loss at step S: {row['matched']}", flush=True)
        results["pairs"][pair] = row
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    first = next(iter(results["pairs"].values()))
    if first.get("content", {}).get("terms"):
        print(terms_table(first))
    results["load_after"] = os.getloadavg()
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
