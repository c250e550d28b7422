"""The measurements, each run by benchmark.py in a process of its own.

A fresh process per measurement keeps peak memory (ru_maxrss) attributable to one model at one
size, and keeps one run's caches and allocator state out of the next one's timings.

Usage (benchmark.py does this): python benchmarks/workers.py KIND ARGS_JSON RESULT_JSON
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import pathlib
import resource
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read when TensorFlow is imported, below

import numpy as np
import tensorflow as tf

PROJECT_ENV = "NST_BENCHMARK_PROJECT"  # set by benchmark.py --project: measure another checkout
PROJECT = pathlib.Path(os.environ.get(PROJECT_ENV) or pathlib.Path(__file__).resolve().parents[1])
IMAGES = ("content", "style")


# ---- process facts ---------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Resident memory now, from /proc/self/status."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# ---- the project under test ------------------------------------------------------------------


def use_project(root: pathlib.Path) -> None:
    """Import nst_client, nst_model and nst_export from the checkout at `root`, not the installed one.

    The editable install maps the package names to one checkout; loading the packages by path
    here lets a snapshot (say, `git archive` of a commit) be measured with the same venv.
    """
    for name, folder in (("nst_client", "client"), ("nst_model", "nst_model"), ("nst_export", "export")):
        init = root / folder / "__init__.py"
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def serving_session(path: str | os.PathLike):
    """nst_model.session.ServingSession: the exported model loaded as TF Serving loads it."""
    from nst_model.session import ServingSession

    return ServingSession(path)


def reference_class() -> type:
    """tests/reference.py's Reference (the TF2 tutorial loop); tests/ is not an installed package."""
    sys.path.insert(0, str(PROJECT / "tests"))
    from reference import Reference

    return Reference


def load_pixels(pixels_dir: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Content and style pixels at `size`, as the model's decode signature made them."""
    folder = pathlib.Path(pixels_dir)
    return np.load(folder / f"content_{size}.npy"), np.load(folder / f"style_{size}.npy")


class Pixels:
    """The `pixels` signature of an exported model, one call of N steps at a time (per-step times)."""

    def __init__(self, path: str, options: dict[str, object], strict: bool = True):
        self.session = serving_session(path)
        signature = self.session.signature("pixels")
        self.dropped = sorted(set(options) - set(signature.inputs))
        if self.dropped and strict:
            raise ValueError(f"this model's pixels signature has no inputs {self.dropped}")
        self.options = {
            k: self._array(v, signature.inputs[k].dtype) for k, v in options.items() if k not in self.dropped
        }

    @staticmethod
    def _array(value: object, dtype_enum: int) -> np.ndarray:
        dtype = tf.dtypes.as_dtype(dtype_enum)
        if dtype == tf.string:
            return np.array(str(value).encode(), dtype=object)
        return np.asarray(value, dtype=dtype.as_numpy_dtype)

    def __call__(self, content, style, steps: int, fetch: list[str] | None = None) -> dict:
        feeds = {"content": content, "style": style, "steps": np.int32(steps), **self.options}
        return self.session.run("pixels", feeds, fetch)

    def warm(self, fetch: list[str] | None = None) -> None:
        """A tiny request, as a server's warmup does: the Session builds and optimises one executor
        per set of feeds and fetches on first use; a served model has done that before its first
        real request."""
        tiny = np.full((1, 16, 16, 3), 0.5, np.float32)
        self(tiny, tiny, 1, fetch=fetch)

    def close(self) -> None:
        self.session.close()


# ---- export and machine ----------------------------------------------------------------------


def prepare(args: dict) -> dict:
    """Export one model per precision with the real weights, and decode the images once per size.

    Decoding through the exported `decode` signature gives exactly the pixels the project's own
    clients optimise, and every contender then starts from the same arrays.
    """
    from nst_export.exporter import export

    models = {}
    for precision in args["precisions"]:
        kwargs = {"precision": precision} if "precision" in inspect.signature(export).parameters else {}
        if not kwargs and precision != "float32":
            continue  # a checkout from before the precision option: float32 only
        started = time.perf_counter()
        path = export(pathlib.Path(args["models_dir"]) / precision, weights=args["weights"], **kwargs)
        models[precision] = {"path": str(path), "export_s": time.perf_counter() - started}
    session = serving_session(next(iter(models.values()))["path"])
    try:
        shapes = decode_images(session, args)
        defaults = signature_defaults(session, "pixels")
    finally:
        session.close()
    from nst_client.settings import DEFAULT_CHUNK

    return {
        "models": models,
        "shapes": shapes,
        "pixels_defaults": defaults,
        "default_chunk": DEFAULT_CHUNK,
        "tensorflow": tf.__version__,
    }


def decode_images(session, args: dict) -> dict[int, list[int]]:
    """Write content_SIZE.npy and style_SIZE.npy; return each size's content [height, width]."""
    shapes = {}
    for size in args["sizes"]:
        for name in IMAGES:
            data = np.array(pathlib.Path(args[name]).read_bytes(), dtype=object)
            pixels = session.run("decode", {"image": data, "max_dim": np.int32(size)})["pixels"]
            np.save(pathlib.Path(args["pixels_dir"]) / f"{name}_{size}.npy", pixels)
            shapes[size] = shapes.get(size) or list(pixels.shape[1:3])
    return shapes


def signature_defaults(session, name: str) -> dict[str, object]:
    """The scalar defaults of a signature's optional inputs: what "the default mode" means."""
    defaults = {}
    for key, info in session.signature(name).inputs.items():
        tensor = session.graph.get_tensor_by_name(info.name)
        if tensor.op.type == "PlaceholderWithDefault" and tensor.shape.rank == 0:
            value = np.asarray(session.session.run(tensor)).item()
            defaults[key] = value.decode() if isinstance(value, bytes) else value
    return defaults


def matmul(args: dict) -> dict:
    """This machine's matrix-multiply rate in float32 and bfloat16 (eager tf.linalg.matmul).

    The yardstick for the style-transfer steps, which are almost all convolutions, i.e. matmuls.
    """
    n, repeats = args["n"], args["repeats"]
    flop = 2 * n**3
    rates = {}
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.cast(tf.random.stateless_uniform([n, n], seed=(1, 2)), dtype)
        b = tf.cast(tf.random.stateless_uniform([n, n], seed=(3, 4)), dtype)
        tf.linalg.matmul(a, b)[0, 0].numpy()  # first call: library set-up, not the rate
        seconds = [timed(lambda a=a, b=b: tf.linalg.matmul(a, b)[0, 0].numpy()) for _ in range(repeats)]
        rates[dtype.name] = {"seconds": seconds, "gflop_per_s": flop / statistics.median(seconds) / 1e9}
    return {"n": n, "flop": flop, "rates": rates}


# ---- time per step ---------------------------------------------------------------------------


def session_steps(args: dict) -> dict:
    """Seconds per step of an exported model in the TF1 Session: (t(steps=N) - t(steps=0)) / N.

    A call also computes the style and content targets and the final image's losses; the
    steps=0 call costs exactly that, so the difference is N optimisation steps.
    """
    content, style = load_pixels(args["pixels_dir"], args["size"])
    model = Pixels(args["model_path"], args["options"], strict=False)
    fetch = ["loss"]
    model.warm(fetch)

    def call(steps: int) -> float:
        return timed(lambda: model(content, style, steps, fetch=fetch))

    first_call_s = call(1)  # first call at this size: kernels pick their algorithms for the shapes
    rss_ready = rss_mib()
    runs = []
    for _ in range(args["repeats"]):
        t0, tn = call(0), call(args["steps"])
        runs.append({"t0_s": t0, "tn_s": tn, "per_step_s": (tn - t0) / args["steps"]})
    model.close()
    return {
        "per_step_s": statistics.median(r["per_step_s"] for r in runs),
        "overhead_per_call_s": statistics.median(r["t0_s"] for r in runs),
        "first_call_s": first_call_s,
        "options_fed": {k: v for k, v in args["options"].items() if k not in model.dropped},
        "options_dropped": model.dropped,
        "runs": runs,
        "rss_ready_mib": rss_ready,
    }


def reference_steps(args: dict) -> dict:
    """Seconds per step of the reference loop (Keras VGG19 + Keras Adam, one tf.function a step)."""
    content, style = load_pixels(args["pixels_dir"], args["size"])
    started = time.perf_counter()
    reference = reference_class()(args["weights"], content, style)
    build_s = time.perf_counter() - started
    first_step_s = timed(reference.step)  # traces and optimises the tf.function
    reference.step()
    rss_ready = rss_mib()
    runs = []
    for _ in range(args["repeats"]):
        started = time.perf_counter()
        for _ in range(args["steps"]):
            reference.step()
        float(reference.image[0, 0, 0, 0])  # eager CPU ops are synchronous; this only makes sure
        runs.append({"per_step_s": (time.perf_counter() - started) / args["steps"]})
    return {
        "per_step_s": statistics.median(r["per_step_s"] for r in runs),
        "build_s": build_s,
        "first_step_s": first_step_s,
        "runs": runs,
        "rss_ready_mib": rss_ready,
    }


# ---- time to reference quality ---------------------------------------------------------------


def reference_quality(args: dict) -> dict:
    """Run the reference loop for N steps; its final objective is the quality to reach.

    The clock runs over the steps only. Building the Keras model and tracing the step function
    happen before it, as the Session's executor is built by warmup requests before its clock
    starts; the first step's remaining set-up (graph optimisation, kernel set-up for the shapes)
    is timed on both sides. Every `chunk` steps the objective is recorded with the clock stopped,
    so the curve can be compared with the Session's at the same steps.
    """
    content, style = load_pixels(args["pixels_dir"], args["size"])
    started = time.perf_counter()
    reference = reference_class()(args["weights"], content, style)
    build_s = time.perf_counter() - started
    trace_s = timed(reference.step.get_concrete_function)
    initial_loss = float(reference.loss(tf.constant(content))[0])
    elapsed, first_step_s, curve = 0.0, None, []
    for done in range(1, args["steps"] + 1):
        step_s = timed(reference.step)
        first_step_s = step_s if first_step_s is None else first_step_s
        elapsed += step_s
        if done % args["chunk"] == 0 or done == args["steps"]:
            curve.append([done, elapsed, float(reference.loss(reference.image)[0])])
    return {
        "steps": args["steps"],
        "seconds": elapsed,
        "final_loss": curve[-1][2],
        "initial_loss": initial_loss,
        "build_s": build_s,
        "trace_s": trace_s,
        "first_step_s": first_step_s,
        "curve": curve,
    }


def session_quality(args: dict) -> dict:
    """The project's chunked run (nst_client.chunked, as nst-client and nst_model.load run it) on
    the exported model through the TF1 Session: calls of `chunk` steps, each handing on the state
    and the targets, until the loss reaches the target (or the step cap); near it, shorter calls
    (see `pacer`).

    The clock covers every call (decoding, targets, steps, losses, PNG encoding, state in and out),
    on a Session already warmed by a tiny run of the same call patterns, as the exported warmup
    requests warm a served model. Options not given keep the signature's defaults: with none, this
    is the project's default mode.
    """
    from nst_model.runner import load

    stylizer = load(args["model_path"])
    evaluations = count_evaluations(stylizer, args["model_path"])
    content, style = (pathlib.Path(args[name]).read_bytes() for name in IMAGES)
    options = {"max_dim": args["size"], **args["options"]}
    stylizer.run(content, style, **{**options, "max_dim": 32}, steps=3, chunk=1, progress=False)  # sides >= 16
    evaluations.clear()
    curve = []
    if "pace" in inspect.signature(stylizer.run).parameters:
        until = {"pace": pacer(args["target"], args["chunk"])}
    else:  # a checkout from before pace: calls of `chunk` steps to the end
        until = {"stop": lambda done, loss: loss <= args["target"]}
    started = time.perf_counter()

    def progress(done: int, total: int, loss: float) -> None:
        if done:
            curve.append([done, time.perf_counter() - started, loss])

    result = stylizer.run(
        content,
        style,
        **options,
        steps=args["max_steps"],
        chunk=args["chunk"],
        progress=progress,
        **until,
    )
    loss = result.losses["loss"]
    return {
        "chunk": args["chunk"],
        "steps": curve[-1][0],
        "seconds": curve[-1][1],
        "final_loss": loss,
        "target": args["target"],
        "reached": loss <= args["target"],
        "curve": curve,
        "evaluations": evaluations if len(evaluations) == curve[-1][0] else None,  # None: not reported
    }


def pacer(target: float, chunk: int) -> Callable[[int, float], int]:
    """The quality run's pace: calls of `chunk` steps until a straight line through the last two
    losses says the target is nearer, then calls of the steps it says are left (at least 1), so a
    run is seen to reach the target within a step or so, not at the next multiple of `chunk`. The
    loss falls ever more slowly, so the line tends to promise too few steps rather than too many."""
    seen: list[tuple[int, float]] = []

    def pace(done: int, loss: float) -> int:
        if loss <= target:
            return 0
        seen.append((done, loss))
        if len(seen) < 2 or seen[-2][1] <= loss:
            return chunk
        (before, higher), _ = seen[-2:]
        per_step = (higher - loss) / (done - before)
        return max(1, min(chunk, math.ceil((loss - target) / per_step)))

    return pace


def count_evaluations(stylizer, model_path: str) -> list[int]:
    """Each step's objective-and-gradient evaluations, read from the `evaluations` output of the
    stylizer's pixels calls (an export from before that output reports none)."""
    from tensorflow.core.protobuf import saved_model_pb2

    counts: list[int] = []
    saved = saved_model_pb2.SavedModel.FromString((pathlib.Path(model_path) / "saved_model.pb").read_bytes())
    if "evaluations" not in saved.meta_graphs[0].signature_def["pixels"].outputs:
        return counts
    inner = stylizer.call

    def call(signature, inputs, outputs):
        wanted = (*outputs, "evaluations") if signature == "pixels" and outputs else outputs
        out = inner(signature, inputs, wanted)
        counts.extend(out.get("evaluations", np.zeros(0, np.int32)).tolist())
        return out

    stylizer.call = call
    return counts


WORKERS: dict[str, Callable[[dict], dict]] = {
    "prepare": prepare,
    "matmul": matmul,
    "session_steps": session_steps,
    "reference_steps": reference_steps,
    "reference_quality": reference_quality,
    "session_quality": session_quality,
}


def main(argv: list[str]) -> int:
    kind, args, result_path = argv
    if os.environ.get(PROJECT_ENV):
        use_project(PROJECT)
    result = WORKERS[kind](json.loads(args))
    result.update(peak_rss_mib=peak_rss_mib(), cpu_s=cpu_seconds())
    pathlib.Path(result_path).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
