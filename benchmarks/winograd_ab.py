"""A/B of VGG19's 3x3 convolutions: oneDNN's direct convolution (tf.nn.conv2d, what the export runs)
against Winograd F(2x2,3x3) and F(4x4,3x3) written with TensorFlow ops (winograd.py), per evaluation
of the objective and its gradient.

One evaluation is what a step costs (an Adam step is one; an L-BFGS step 1.003 on average): the
objective of nst_model.model.StyleTransfer (Gram style losses, content, TV, the reference balance)
and its gradient w.r.t. the image, traced in a tf.function with the image's shape unknown, as the
export traces it. Each arm is a StyleTransfer whose VGG19 runs the arm's convolution (block1_conv1,
with 3 input channels, stays direct); all arms share the weights, the targets (from the direct
network) and the image (the content photo). The repeats take turns (A, B, C, A, B, C, ...) so a
slow spell of the machine hits every arm alike; the medians are printed, with each arm's difference
from the direct arm in loss and gradient. `--per-layer` also times each convolution alone (forward
with bias and ReLU, and the gradient to its input), to see where the Winograd arm wins or loses.

    python benchmarks/winograd_ab.py --weights ../shared/weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        --sizes 512 1024 --precisions float32 bfloat16 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import statistics
import sys
import time

# Per arm, the Winograd tile (m of F(m x m, 3 x 3)) of each block's convolutions; None: direct.
# block1_conv1 (3 input channels) is always direct. "hybrid" takes each block's fastest in --per-layer.
ARMS = {
    "direct": {},
    "winograd2": {"block1": 2, "block2": 2, "block3": 2, "block4": 2, "block5": 2},
    "winograd4": {"block1": 4, "block2": 4, "block3": 4, "block4": 4, "block5": 4},
    "hybrid": {"block3": 4, "block4": 4, "block5": 2},
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="the VGG19 .h5 file; the photos are read beside it ($NST_VGG19_WEIGHTS)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512], help="longest sides (512)")
    parser.add_argument("--precisions", nargs="+", default=["float32"], choices=("float32", "bfloat16"))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="the first is the base")
    parser.add_argument("--repeats", type=int, default=5, help="timed evaluations per arm (5)")
    parser.add_argument("--per-layer", action="store_true", help="also time each convolution alone")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import numpy as np
    import tensorflow as tf
    import winograd  # this folder's
    from benchmark import busy_seconds  # this folder's
    from midrun import machine_line, photos  # this folder's

    from nst_model.model import StyleTransfer, validate
    from nst_model.options import OPTIONS
    from nst_model.vgg import BGR_MEANS, LAYERS, VGG19, _pool, load_weights

    class WinogradVGG19(VGG19):
        """VGG19 whose blocks in `tiles` run winograd.conv2d with that block's F(m x m, 3 x 3); the
        transformed kernels are kept in variables, as an export would keep them."""

        def __init__(self, weights: dict, precision: str, tiles: dict[str, int]):
            super().__init__(weights, precision)
            self.tiles = {n: tiles[b] for n in self.kernels if (b := n.split("_")[0]) in tiles and n != "block1_conv1"}
            self.transformed = {
                n: tuple(tf.Variable(u, trainable=False) for u in winograd.transforms(self.kernels[n], m))
                for n, m in self.tiles.items()
            }

        def conv(self, x: tf.Tensor, name: str) -> tf.Tensor:
            if name not in self.tiles:
                return tf.nn.conv2d(x, self.kernels[name], 1, "SAME")
            forward, backward = (tf.convert_to_tensor(u) for u in self.transformed[name])
            return winograd.conv2d(x, self.tiles[name], forward, backward)

        def __call__(self, image, layers, avg_pool=False):  # VGG19.__call__ with self.conv
            x = tf.cast(tf.reverse(image * 255.0, axis=[-1]) - tf.constant(BGR_MEANS), self.dtype)
            outputs, wanted = {}, set(layers)
            for name in LAYERS:
                if name == "pool":
                    x = _pool(x, avg_pool)
                    continue
                x = tf.nn.relu(tf.nn.bias_add(self.conv(x, name), self.biases[name]))
                if name in wanted:
                    outputs[name] = x
                    if len(outputs) == len(wanted):
                        return outputs
            raise ValueError(f"unknown VGG19 layers: {sorted(wanted - set(outputs))}")

    weights_path, content_jpeg, style_jpeg = photos(parser, args.weights)
    weights = load_weights(weights_path)[0]
    machine_line()
    print(f"TensorFlow {tf.__version__}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    options = {o.name: tf.constant(o.default, o.dtype) for o in OPTIONS}
    options["style_balance"] = tf.constant("reference")
    controls = validate(options)._replace(avg_pool=False)

    def picture(data: bytes, size: int) -> tf.Tensor:
        image = tf.image.convert_image_dtype(tf.io.decode_jpeg(data, channels=3), tf.float32)[None]
        scale = size / max(image.shape[1:3])
        side = [round(image.shape[1] * scale), round(image.shape[2] * scale)]
        return tf.clip_by_value(tf.image.resize(image, side, antialias=True), 0.0, 1.0)

    started_busy, started_cpu, started = busy_seconds(), cpu_seconds(), time.perf_counter()
    for precision in args.precisions:
        models = {}
        for arm in args.arms:
            models[arm] = StyleTransfer(weights, precision)
            if ARMS[arm]:
                models[arm].vgg = WinogradVGG19(weights, precision, ARMS[arm])
        print(f"\n{precision}: Winograd tile per block: " + "; ".join(f"{a} {ARMS[a] or 'none'}" for a in args.arms))
        for size in args.sizes:
            content, style = picture(content_jpeg, size), picture(style_jpeg, size)
            targets = models[args.arms[0]].targets(content, lambda i, s=style: s, tf.constant(1), controls, 4 * size)

            def evaluation(model, targets=targets):
                @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
                def evaluate(image):
                    with tf.GradientTape() as tape:
                        tape.watch(image)
                        loss = model.objective(image, targets, controls).loss
                    return loss, tape.gradient(loss, image)

                return evaluate

            functions = {arm: evaluation(m) for arm, m in models.items()}
            results = {arm: [x.numpy() for x in f(content)] for arm, f in functions.items()}  # traced, warmed
            for f in functions.values():
                f(content)
            seconds = {arm: [] for arm in functions}
            for _ in range(args.repeats):
                for arm, f in functions.items():
                    t = time.perf_counter()
                    f(content)[0].numpy()
                    seconds[arm].append(time.perf_counter() - t)
            base_loss, base_grad = results[args.arms[0]]
            base = statistics.median(seconds[args.arms[0]])
            print(f"\n{precision} {size} px ({content.shape[1]}x{content.shape[2]}), {args.repeats} turns:")
            for arm, times in seconds.items():
                loss, grad = results[arm]
                median = statistics.median(times)
                print(
                    f"  {arm:<10} {1000 * median:8.0f} ms per evaluation  x{base / median:.2f}  "
                    f"loss {loss:.6e} (rel. diff {abs(loss - base_loss) / abs(base_loss):.1e})  gradient: max abs "
                    f"diff / max abs {np.abs(grad - base_grad).max() / np.abs(base_grad).max():.1e}, "
                    f"L2 rel. diff {np.linalg.norm(grad - base_grad) / np.linalg.norm(base_grad):.1e}  "
                    f"({' '.join(f'{1000 * s:.0f}' for s in times)})"
                )
            if args.per_layer:
                per_layer(tf, models, content, args.repeats)
    wall = time.perf_counter() - started
    background = max(0.0, (busy_seconds() - started_busy - (cpu_seconds() - started_cpu)) / wall)
    print(f"\nother processes used {background:.2f} cores meanwhile; load average now {os.getloadavg()[0]:.2f}")
    return 0


def per_layer(tf, models: dict, content, repeats: int) -> None:
    """Each convolution alone at its place in the network: forward (conv, bias, ReLU) and the
    gradient to its input, ms per arm (medians of turns)."""
    from nst_model.vgg import LAYERS, NEEDED, conv_shapes

    height, width = content.shape[1:3]
    print("  per convolution, forward + gradient to the input, ms:")
    pools = 0
    for name in LAYERS:
        if name == "pool":
            pools += 1
            continue
        if name == "block1_conv1":
            continue
        if name not in conv_shapes(NEEDED):
            break
        _, _, cin, cout = conv_shapes(NEEDED)[name]
        x = tf.random.normal([1, height // 2**pools, width // 2**pools, cin], dtype=tf.float32)
        up = tf.random.normal([1, height // 2**pools, width // 2**pools, cout])

        def timed(model, name=name, x=x, up=up):
            @tf.function(input_signature=[tf.TensorSpec([1, None, None, None], tf.float32)])
            def run(x):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    v = model.vgg
                    xc = tf.cast(x, v.dtype)
                    conv = v.conv(xc, name) if hasattr(v, "conv") else tf.nn.conv2d(xc, v.kernels[name], 1, "SAME")
                    y = tf.nn.relu(tf.nn.bias_add(conv, v.biases[name]))
                    loss = tf.reduce_sum(tf.cast(y, tf.float32) * up)
                return tape.gradient(loss, x)

            return run

        functions = {arm: timed(m) for arm, m in models.items()}
        for f in functions.values():
            f(x)
            f(x)
        seconds = {arm: [] for arm in functions}
        for _ in range(repeats):
            for arm, f in functions.items():
                t = time.perf_counter()
                f(x).numpy()
                seconds[arm].append(time.perf_counter() - t)
        print(
            f"    {name:<13} {x.shape[1]}x{x.shape[2]}x{cin}: "
            + "  ".join(f"{arm} {1000 * statistics.median(s):.1f}" for arm, s in seconds.items())
        )


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    sys.exit(main())
