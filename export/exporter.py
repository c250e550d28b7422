"""Export the style-transfer SavedModel for TensorFlow Serving, then check it the server's way.

Layout written: <model-dir>/<version>/ with saved_model.pb, variables/, and assets.extra/ holding
the warmup requests the server replays at load time and export_info.json.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import pathlib
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from nst_client.contract import LIMITS, limits_line, signature_lines
from nst_model.model import StyleTransfer
from nst_model.options import DEFAULTS, EXPORTED_STYLE_LOSSES, KEEP_PHOTO, MIN_SIDE, Limits
from nst_model.runner import Stylizer
from nst_model.session import WARMUP_FILE, ServingSession
from nst_model.signatures import SIGNATURES, Servable
from nst_model.vgg import load_weights

INFO_FILE = "export_info.json"
# Staging folders (this export's .staging-XXXX, and the .N-staging-XXXX of exports before locks), each with
# its lock file beside it: names the server's poller ignores, not being numbers.
STAGING = re.compile(r"\.(?:\d+-)?staging-\w+")
LOCK_SUFFIX = ".lock"


def warmup_requests(model_name: str, servable: Servable) -> list[predict_pb2.PredictRequest]:
    """The calls tiny runs make (16 px images), recorded from the chunk loop itself: a single
    serving_default call, and for each optimiser a chunked run's decode call, its first pixels call
    and a later one; where the export holds more than one style loss, the same calls again naming
    each (a request that sends `style_loss` is another set of inputs); and a masked run, one call and
    chunked (a mask with `mask_styles`, as the command lines send them). The server prepares a
    Session executor for each set of inputs and outputs the first time it meets it (seconds):
    replayed at load, these leave none to prepare later. Calls with the same inputs and outputs as
    one already recorded are left out."""
    pixels = np.random.default_rng(0).random((MIN_SIDE, MIN_SIDE, 3), dtype=np.float32)
    png = tf.io.encode_png(tf.image.convert_image_dtype(pixels, tf.uint8)).numpy()
    halves = np.zeros((MIN_SIDE, MIN_SIDE, 1), np.uint8)
    halves[:, MIN_SIDE // 2 :] = 255
    masked = {"mask": tf.io.encode_png(halves).numpy(), "mask_styles": (0, KEEP_PHOTO)}
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
    if "gram" in held:
        for chunk in (0, 1):
            record.run(png, png, steps=3, max_dim=MIN_SIDE, chunk=chunk, progress=False, **masked)
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
    """One past the highest number in `model_dir` (a file of that name counts too: the number is taken)."""
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    return max(versions, default=0) + 1


def _lock_of(staging: pathlib.Path) -> pathlib.Path:
    return staging.with_name(staging.name + LOCK_SUFFIX)


def _try_lock(path: pathlib.Path) -> int | None:
    """An open, exclusively locked descriptor of `path`; None if it is gone or another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_stale_staging(model_dir: pathlib.Path) -> list[pathlib.Path]:
    """Remove the staging folders that no live export owns; returns them.

    A live export holds an flock on its folder's lock file, which the kernel drops when the process
    ends, however it ends (SIGKILL, out of memory, a segfault): a lock file that can be locked is an
    owner gone. A staging folder without a lock file is from an export before locks. Lock files left
    without a folder (an export killed just before making it, or just after publishing) go too.
    """
    removed = []
    for path in sorted(model_dir.iterdir()):
        folder = path.with_name(path.name.removesuffix(LOCK_SUFFIX))
        if path != folder and STAGING.fullmatch(folder.name):  # a lock file: free means its owner is gone
            fd = _try_lock(path)
            if fd is None:
                continue  # a live export's, or just removed by another clean-up
            try:
                if folder.exists():
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
                path.unlink()  # while locked: an export that made it and locks it after us takes another
            finally:
                os.close(fd)
        elif STAGING.fullmatch(path.name) and path.is_dir() and not _lock_of(path).exists():
            shutil.rmtree(path, ignore_errors=True)  # from an export before locks
            removed.append(path)
    return removed


def _stage(model_dir: pathlib.Path) -> tuple[pathlib.Path, int]:
    """A new staging folder in `model_dir`, and the descriptor of its lock file, locked for as long as this
    process lives (see remove_stale_staging). The lock is held before the folder exists."""
    while True:
        fd, name = tempfile.mkstemp(prefix=".staging-", suffix=LOCK_SUFFIX, dir=model_dir)
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while another export's clean-up removes this very file
        if os.fstat(fd).st_nlink:
            break
        os.close(fd)  # removed as stale between its creation and the lock: take another
    staging = pathlib.Path(name.removesuffix(LOCK_SUFFIX))
    try:
        staging.mkdir()
        staging.chmod(0o755)  # whatever the umask: the server may run as another user
    except BaseException:
        _unstage(staging, fd)
        raise
    return staging, fd


def _unstage(staging: pathlib.Path, lock_fd: int) -> None:
    """Remove the staging folder, if still there, then its lock file, then let the lock go."""
    shutil.rmtree(staging, ignore_errors=True)
    _lock_of(staging).unlink(missing_ok=True)
    os.close(lock_fd)


def publish(staging: pathlib.Path, model_dir: pathlib.Path, version: int | None) -> pathlib.Path:
    """Rename the checked staging folder to `model_dir/version`, in one step the server's poller sees whole.
    Left out, the version is the next free number at the rename: another export may take one between
    the look and the rename (the rename then fails, the folder being full), and this one takes the next."""
    number = 0
    while True:
        number = version if version is not None else max(next_version(model_dir), number + 1)
        target = model_dir / str(number)
        try:
            os.rename(staging, target)
            return target
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
            if version is not None:
                raise FileExistsError(f"{target} already exists; pick another --version or leave it out") from None


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
    if version is not None and (model_dir / str(version)).exists():
        raise FileExistsError(f"{model_dir / str(version)} already exists; pick another --version or leave it out")
    remove_stale_staging(model_dir)
    arrays, weights_path, weights_sha = load_weights(weights)
    module = Servable(StyleTransfer(arrays, precision, style_losses), limits)
    # A sibling folder whose name is not a number: the server's poller ignores it until the rename.
    staging, lock_fd = _stage(model_dir)
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
        target = publish(staging, model_dir, version)
    finally:
        _unstage(staging, lock_fd)  # after a publish, only the lock file is left to remove
    return target
