"""Export the style-transfer SavedModel for TensorFlow Serving, then check it the server's way.

Layout written: <model-dir>/<version>/ with saved_model.pb, variables/, and assets.extra/ holding
the warmup requests the server replays at load time and export_info.json.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from nst_client.contract import LIMITS, limits_line, signature_lines
from nst_model.model import StyleTransfer
from nst_model.options import DEFAULTS, EXPORTED_STYLE_LOSSES, MIN_SIDE, Limits
from nst_model.runner import Stylizer
from nst_model.session import WARMUP_FILE, ServingSession
from nst_model.signatures import SIGNATURES, Servable
from nst_model.vgg import load_weights

INFO_FILE = "export_info.json"


def warmup_requests(model_name: str, servable: Servable) -> list[predict_pb2.PredictRequest]:
    """The calls tiny runs make (16 px images), recorded from the chunk loop itself: a single
    serving_default call, and for each optimiser a chunked run's decode call, its first pixels call
    and a later one; where the export holds more than one style loss, the same calls again naming
    each (a request that sends `style_loss` is another set of inputs). The server prepares a
    Session executor for each set of inputs and outputs the first time it meets it (seconds):
    replayed at load, these leave none to prepare later. Calls with the same inputs and outputs as
    one already recorded are left out."""
    pixels = np.random.default_rng(0).random((MIN_SIDE, MIN_SIDE, 3), dtype=np.float32)
    png = tf.io.encode_png(tf.image.convert_image_dtype(pixels, tf.uint8)).numpy()
    requests = []
    in_process = Stylizer.from_module(servable)

    seen = set()

    def recording(signature, inputs, outputs):
        pattern = (signature, tuple(sorted(inputs)), tuple(outputs))
        if pattern in seen:
            return in_process.call(signature, inputs, outputs)
        seen.add(pattern)
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature), output_filter=list(outputs)
        )
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        requests.append(request)
        return in_process.call(signature, inputs, outputs)

    record = Stylizer(recording, in_process.defaults)
    held = servable.model.style_losses
    for loss in (None, *(held if len(held) > 1 else ())):
        named = {} if loss is None else {"style_loss": loss}
        record.run(png, png, steps=1, max_dim=MIN_SIDE, chunk=0, progress=False, **named)
        for optimizer in ("lbfgs", "adam"):
            options = {} if optimizer == DEFAULTS["optimizer"] else {"optimizer": optimizer}
            record.run(png, png, steps=3, max_dim=MIN_SIDE, chunk=1, progress=False, **named, **options)
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
        for request in read_warmup(path / WARMUP_FILE):
            feeds = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = session.run(request.model_spec.signature_name, feeds, list(request.output_filter))
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
    """The signatures as the server sees them: inputs with dtype and default; outputs."""
    session = ServingSession(path)
    lines = []
    try:
        for name in SIGNATURES:
            lines += signature_lines(name, session.signature(name), _dtype_name, shapes=False)
        limits = {k: int(v) for k, v in session.run(LIMITS, {}, []).items()}
    finally:
        session.close()
    held = json.loads((path / "assets.extra" / INFO_FILE).read_text())["style_losses"]
    return "\n".join([*lines, limits_line(limits), f"style losses: {', '.join(held)} (nst-export --style-losses)"])


def _dtype_name(enum: int) -> str:
    """float32, as the README's tables write dtypes."""
    return tf.dtypes.as_dtype(enum).name


def next_version(model_dir: pathlib.Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export(
    model_dir: str | os.PathLike,
    version: int | None = None,
    weights: str | os.PathLike | None = None,
    precision: str = "float32",
    limits: Limits | None = None,
    style_losses: tuple[str, ...] = EXPORTED_STYLE_LOSSES,
) -> pathlib.Path:
    """Write, check and publish a new version; returns its folder. Never leaves a partial version.
    `limits` (default: the model's own) are enforced by the graph and reported by `limits`;
    `style_losses` are those a request may choose (each costs the server time to prepare calls)."""
    limits = limits or Limits()
    if problem := limits.problem():
        raise ValueError(problem)
    model_dir = pathlib.Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else version
    target = model_dir / str(version)
    if target.exists():
        raise FileExistsError(f"{target} already exists; pick another --version or leave it out")
    arrays, weights_path, weights_sha = load_weights(weights)
    module = Servable(StyleTransfer(arrays, precision, style_losses), limits)
    # A sibling folder whose name is not a number: the server's poller ignores it until the rename.
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{version}-staging-", dir=model_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    try:
        tf.saved_model.save(module, str(staging), signatures=module.signatures())
        write_warmup(staging / WARMUP_FILE, warmup_requests(model_dir.name, module))
        info = {
            "tensorflow": tf.__version__,
            "weights_file": weights_path.name,
            "weights_sha256": weights_sha,
            "precision": precision,
            "style_losses": list(module.model.style_losses),
            "defaults": limits.defaults(),
            "limits": limits.as_dict(),
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
