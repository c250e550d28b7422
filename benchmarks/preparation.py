"""What each style loss an export holds costs the server before it runs anything: the export's
duration, and the seconds a fresh Session spends preparing an executor for a kind of call (the
first call of a set of inputs and outputs, less the second). The figures behind nst-export's
default of --style-losses gram (docs/controls.md, "Style losses").

    python benchmarks/preparation.py --weights ../shared/weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="VGG19 .h5 weights (default: $NST_VGG19_WEIGHTS)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import numpy as np
    import tensorflow as tf
    from roundtrip import cpu_model  # this folder's

    from nst_export.exporter import export
    from nst_model.options import MIN_SIDE, STYLE_LOSSES
    from nst_model.session import ServingSession

    pixels = np.random.default_rng(0).random((MIN_SIDE, MIN_SIDE, 3), dtype=np.float32)
    png = tf.io.encode_png(tf.image.convert_image_dtype(pixels, tf.uint8)).numpy()
    calls = {  # name: (signature, inputs)
        "serving_default": ("serving_default", {"content": png, "style": png, "steps": 1, "max_dim": MIN_SIDE}),
        "pixels": ("pixels", {"content": pixels[None], "style": pixels[None], "steps": 1}),
    }
    print(f"CPU: {cpu_model()}; {os.cpu_count()} cores; TensorFlow {tf.__version__}")
    print(f"{'--style-losses':<18} {'export s':>9}" + "".join(f" {name + ' prep s':>21}" for name in calls))
    with tempfile.TemporaryDirectory() as folder:
        for held in (("gram",), STYLE_LOSSES):
            started = time.perf_counter()
            path = export(pathlib.Path(folder) / "-".join(held), weights=args.weights, style_losses=held)
            exported = time.perf_counter() - started
            session = ServingSession(path)  # fresh: no executor prepared yet
            row = f"{','.join(held):<18} {exported:9.1f}"
            for signature, inputs in calls.values():
                feeds = {k: np.array(v, object) if isinstance(v, bytes) else np.asarray(v) for k, v in inputs.items()}
                feeds = {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in feeds.items()}
                times = []
                for _ in range(2):
                    started = time.perf_counter()
                    session.run(signature, feeds, ["loss"])
                    times.append(time.perf_counter() - started)
                row += f" {times[0] - times[1]:21.1f}"
            session.close()
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
