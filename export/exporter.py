"""Export the style-transfer SavedModel for TensorFlow Serving, then check it the server's way.

Layout written: <model-dir>/<version>/ with saved_model.pb, variables/, and assets.extra/ holding
the warmup requests the server replays at load time and export_info.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from nst_model.model import SIGNATURES, StyleTransfer
from nst_model.options import CONTENT_LAYER, DEFAULTS, MAX_INPUT_PIXELS, MAX_SIDE, MAX_STEPS, MIN_SIDE, PRECISIONS
from nst_model.session import ServingSession
from nst_model.vgg import WeightsError, load_weights

WARMUP_FILE = "tf_serving_warmup_requests"
INFO_FILE = "export_info.json"


def warmup_requests(model_name: str) -> list[predict_pb2.PredictRequest]:
    """One tiny request per signature (16 px images, 1 step), so first real calls start warm."""
    pixels = np.random.default_rng(0).random((1, MIN_SIDE, MIN_SIDE, 3), dtype=np.float32)
    png = tf.io.encode_png(tf.image.convert_image_dtype(pixels[0], tf.uint8)).numpy()
    png, pixels = tf.make_tensor_proto(png), tf.make_tensor_proto(pixels)
    one_step, small = tf.make_tensor_proto(1, tf.int32), tf.make_tensor_proto(MIN_SIDE, tf.int32)
    inputs = {
        "serving_default": {"content": png, "style": png, "steps": one_step, "max_dim": small},
        "pixels": {"content": pixels, "style": pixels, "steps": one_step},
        "decode": {"image": png, "max_dim": small},
    }
    requests = []
    for signature, feeds in inputs.items():
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
        for name, proto in feeds.items():
            request.inputs[name].CopyFrom(proto)
        requests.append(request)
    return requests


def write_warmup(path: pathlib.Path, requests: list[predict_pb2.PredictRequest]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def read_warmup(path: pathlib.Path) -> list[predict_pb2.PredictRequest]:
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    return [log.predict_log.request for log in logs]


def verify(path: pathlib.Path) -> None:
    """Load `path` as the server does and replay its warmup requests; raise if anything is off."""
    session = ServingSession(path)
    try:
        missing = set(SIGNATURES) - set(session.signatures)
        if missing:
            raise RuntimeError(f"{path}: signatures {sorted(missing)} missing from the export")
        for request in read_warmup(path / "assets.extra" / WARMUP_FILE):
            feeds = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = session.run(request.model_spec.signature_name, feeds)
            for name, value in outputs.items():
                if np.asarray(value).dtype.kind == "f" and not np.isfinite(value).all():
                    raise RuntimeError(f"{path}: warmup of {request.model_spec.signature_name} gave non-finite {name}")
            if "image_bytes" in outputs:
                size = tf.io.decode_png(outputs["image_bytes"]).shape
                if size != (MIN_SIDE, MIN_SIDE, 3):
                    raise RuntimeError(f"{path}: warmup image came back {size}, expected {MIN_SIDE}x{MIN_SIDE}x3")
    finally:
        session.close()


def describe(path: pathlib.Path) -> str:
    """The signatures as the server sees them: inputs with dtype, shape and default; outputs."""
    session = ServingSession(path)
    lines = []
    try:
        for name in SIGNATURES:
            lines.append(f"signature {name!r}")
            signature = session.signature(name)
            for direction, tensors in (("in ", signature.inputs), ("out", signature.outputs)):
                for key in sorted(tensors):
                    info = tensors[key]
                    dtype = tf.dtypes.as_dtype(info.dtype).name
                    shape = [d.size for d in info.tensor_shape.dim]
                    default = _default_of(session, info.name) if direction == "in " else ""
                    lines.append(f"  {direction} {key:<15} {dtype:<8} {shape!s:<18} {default}")
    finally:
        session.close()
    return "\n".join(lines)


def _default_of(session: ServingSession, tensor_name: str) -> str:
    tensor = session.graph.get_tensor_by_name(tensor_name)
    if tensor.op.type != "PlaceholderWithDefault":
        return "required"
    value = np.asarray(session.session.run(tensor))
    if value.size == 0:
        return "default: empty"
    shown = [
        v.decode() if isinstance(v, bytes) else f"{v:g}" if isinstance(v, float) else str(v)
        for v in value.ravel().tolist()
    ]
    return f"default: {' '.join(shown)}"


def next_version(model_dir: pathlib.Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export(
    model_dir: str | os.PathLike,
    version: int | None = None,
    weights: str | os.PathLike | None = None,
    precision: str = "float32",
) -> pathlib.Path:
    """Write, check and publish a new version; returns its folder. Never leaves a partial version."""
    model_dir = pathlib.Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else version
    target = model_dir / str(version)
    if target.exists():
        raise FileExistsError(f"{target} already exists; pick another --version or leave it out")
    arrays, weights_path, weights_sha = load_weights(weights, CONTENT_LAYER)
    module = StyleTransfer(arrays, precision)
    # A sibling folder whose name is not a number: the server's poller ignores it until the rename.
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{version}-staging-", dir=model_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    try:
        tf.saved_model.save(module, str(staging), signatures=module.signatures())
        write_warmup(staging / "assets.extra" / WARMUP_FILE, warmup_requests(model_dir.name))
        info = {
            "tensorflow": tf.__version__,
            "weights_file": weights_path.name,
            "weights_sha256": weights_sha,
            "precision": precision,
            "defaults": DEFAULTS,
            "limits": {
                "max_steps": MAX_STEPS,
                "min_side": MIN_SIDE,
                "max_side": MAX_SIDE,
                "max_input_pixels": MAX_INPUT_PIXELS,
            },
            "signatures": list(SIGNATURES),
            "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        (staging / "assets.extra" / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        verify(staging)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nst-export", description="Export the servable style-transfer SavedModel.")
    parser.add_argument(
        "--model-dir", default="models/nst", help="the model's folder; its name is the served model name (models/nst)"
    )
    parser.add_argument("--version", type=int, help="version number (default: one past the highest existing)")
    parser.add_argument("--weights", help="VGG19 .h5 weights (default: $NST_VGG19_WEIGHTS, else the Keras download)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="VGG arithmetic: bfloat16 is several times faster where the CPU has AMX/AVX512-BF16 or on GPUs",
    )
    args = parser.parse_args(argv)
    if args.version is not None and args.version < 1:
        parser.error("--version must be a positive integer")
    started = time.perf_counter()
    try:
        path = export(args.model_dir, args.version, args.weights, args.precision)
    except (WeightsError, FileExistsError) as e:
        parser.exit(2, f"nst-export: error: {e}\n")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(describe(path))
    print(
        f"exported {path} ({size / 2**20:.1f} MiB) in {time.perf_counter() - started:.1f} s; "
        "checked through the TF1 Session loader with its warmup requests"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
