"""Issue 25's lever 2: L-BFGS with a preconditioned initial inverse Hessian, A/B by steps to quality.

Each arm is a metric M for `nst_model.lbfgs` (the initial inverse-Hessian guess is gamma * M, gamma =
s.y / y.My of the newest pair, so M's overall size does not matter):

- scalar: M = I, the usual first guess (gamma = s.y / y.y);
- spectral P: `nst_model.precondition.spectral` with power P (the export's is its POWER): each
  colour channel's spatial frequencies f (cycles per pixel) scaled by max(f, 1 / longest side)^-P
  (Lucid's frequency-scaled parameterisation as a metric: its decay power 1 is P = 2);
- colour: the channels mixed by C C^T, C Lucid's square root of ImageNet's colour correlation,
  so steps along the luminance direction are larger than along the chroma ones;
- spectral P+colour: both (they commute: one acts on channels, the other in space).

Everything runs in process through `StyleTransfer.optimise` (the export's own loop), in the given
precision, with the tutorial's objective (style_balance=reference). Per pair: the target is the
objective after N Adam steps from the content (the reference's algorithm, run by the same model);
then each arm runs L-BFGS from the content in calls of one step (each resuming the last, as a chunked
client does), reading the loss and evaluation count after each, until it reaches the target x (1 +
1e-3) or --max-steps. Printed: steps to the target, loss at --loss-at steps, evaluations per step.

    python benchmarks/precondition.py --size 256 --precision bfloat16 --reference-steps 1000 \\
        --arms scalar spectral1 spectral2 colour spectral1+colour \\
        --pairs tubingen:starry_night tubingen:the_scream golden_gate:starry_night
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from midrun import machine_line  # this folder's

from nst_model import lbfgs
from nst_model.model import OPTIMIZERS, Controls, State, StyleTransfer, Targets, initial_state, regions, validate
from nst_model.options import OPTIONS
from nst_model.precondition import spectral
from nst_model.vgg import load_weights

# Lucid's square root of ImageNet's colour correlation (lucid/optvis/param/color.py), normalized.
COLOUR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
COLOUR_SQRT /= np.max(np.linalg.norm(COLOUR_SQRT, axis=0))
TOLERANCE = 1e-3


def colour(v: tf.Tensor) -> tf.Tensor:
    return tf.tensordot(v, tf.constant(COLOUR_SQRT @ COLOUR_SQRT.T), axes=[[3], [0]])


def arm_metric(name: str) -> lbfgs.Metric:
    if name == "scalar":
        return lbfgs.identity
    parts = name.split("+")
    metrics = [colour if p == "colour" else functools.partial(spectral, power=float(p[8:])) for p in parts]
    if len(metrics) == 1:
        return metrics[0]
    return lambda v: metrics[0](metrics[1](v))


def picture(path: pathlib.Path, size: int) -> tf.Tensor:
    image = tf.image.convert_image_dtype(tf.io.decode_jpeg(path.read_bytes(), channels=3), tf.float32)[None]
    scale = size / max(image.shape[1:3])
    side = [round(image.shape[1] * scale), round(image.shape[2] * scale)]
    return tf.clip_by_value(tf.image.resize(image, side, antialias=True), 0.0, 1.0)


def state_spec(state: State) -> State:
    """The state's shapes as the export's signature has them: any size, any number of pairs."""

    def spec(t: tf.Tensor) -> tf.TensorSpec:
        if t.shape.rank != 4:
            return tf.TensorSpec([None] * t.shape.rank, t.dtype)
        return tf.TensorSpec([1 if t.shape[0] == 1 else None, None, None, 3], t.dtype)

    return State(*[spec(t) for t in state])


def runner(model: StyleTransfer, targets: Targets, controls: Controls, spec: State):
    """state, steps -> (state, loss, evaluations per step): the export's loop, traced once per size."""

    @tf.function(input_signature=[spec, tf.TensorSpec([], tf.int32)])
    def run(state, steps):
        new, terms, evaluations = model.optimise(targets, steps, controls, state)
        return new, terms.loss, evaluations

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=os.environ.get("NST_VGG19_WEIGHTS"), help="VGG19 .h5 ($NST_VGG19_WEIGHTS)")
    parser.add_argument("--images", help="the images folder (default: ../../images from the weights file)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--precision", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--reference-steps", type=int, default=1000, help="Adam steps that set the target (1000)")
    parser.add_argument("--target", type=float, help="a given objective to reach instead (e.g. the Keras reference's)")
    parser.add_argument("--max-steps", type=int, default=600, help="L-BFGS steps before an arm gives up (600)")
    parser.add_argument("--arms", nargs="+", default=["scalar", "spectral1", "spectral2", "colour"])
    parser.add_argument("--pairs", nargs="+", default=["tubingen:starry_night"], help="content:style names")
    parser.add_argument("--loss-at", type=int, nargs="+", default=[50, 100, 200, 324], help="steps to print at")
    parser.add_argument("--json", help="write every step's loss and evaluations here")
    args = parser.parse_args(argv)
    if not args.weights:
        parser.error("give --weights or set NST_VGG19_WEIGHTS")
    images = pathlib.Path(args.images or pathlib.Path(args.weights).resolve().parents[1] / "images")

    machine_line()
    print(f"TensorFlow {tf.__version__}; {args.precision}, {args.size} px; load {os.getloadavg()[0]:.2f}", flush=True)
    model = StyleTransfer(load_weights(args.weights)[0], args.precision)
    options = {o.name: tf.constant(o.default, o.dtype) for o in OPTIONS}
    options["style_balance"] = tf.constant("reference")
    controls = validate(options)
    adam = controls._replace(optimizer=tf.constant(OPTIMIZERS.index("adam")))
    results: dict = {"args": vars(args), "pairs": {}}
    for pair in args.pairs:
        content_name, style_name = pair.split(":")
        content = picture(images / "content" / f"{content_name}.jpg", args.size)
        style = picture(images / "style" / f"{style_name}.jpg", args.size)
        unmasked = regions(tf.constant(""), content, tf.constant(1), controls, model.style_losses)
        targets = model.targets(content, lambda i, s=style: s, tf.constant(1), controls, unmasked, 4 * args.size)
        start = initial_state(content, lambda s=style: s, controls)
        spec = state_spec(start)

        t = time.perf_counter()
        if args.target:
            target, source = args.target, "given"
        else:
            state, loss = start, None
            run = runner(model, targets, adam, spec)
            for done in range(0, args.reference_steps, 100):
                state, loss, _ = run(state, tf.constant(min(100, args.reference_steps - done)))
            target, source = float(loss), f"{args.reference_steps} Adam steps"
        print(
            f"\n{pair} ({content.shape[1]}x{content.shape[2]}): target {target:.5e} ({source}; "
            f"{time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        results["pairs"][pair] = {"target": target, "arms": {}}
        for arm in args.arms:
            model.metric = arm_metric(arm)
            run = runner(model, targets, controls, spec)
            t = time.perf_counter()
            state, losses, evaluations, reached = start, [], [], None
            while len(losses) < args.max_steps:
                state, loss, counts = run(state, tf.constant(1))
                losses.append(float(loss))
                evaluations.append(int(counts[0]))
                if reached is None and losses[-1] <= target * (1 + TOLERANCE):
                    reached = len(losses)
                if reached and len(losses) >= max(args.loss_at):
                    break
            seconds = time.perf_counter() - t
            at = "  ".join(f"{n}: {losses[n - 1]:.4e}" for n in args.loss_at if n <= len(losses))
            print(
                f"  {arm:<18} steps to target {reached or f'>{len(losses)}'!s:>5}  evals/step "
                f"{np.mean(evaluations):.3f}  final {losses[-1]:.4e}  {at}  ({seconds:.0f} s)",
                flush=True,
            )
            results["pairs"][pair]["arms"][arm] = {"reached": reached, "losses": losses, "evaluations": evaluations}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    sys.exit(main())
