"""The serving side of nst-devserver: models, Predict with the real server's checks, run slots, gRPC.

It answers the gRPC API the real server offers for this model (PredictionService.Predict and
GetModelMetadata, ModelService.GetModelStatus) and runs requests the way the real server does:
every numeric version under the model folder loaded through the TF1 Session loader, each
request run by the SignatureDef's tensor names with no dtype conversion, the gRPC deadline as
the Session's run timeout, the warmup requests replayed at load, and the real server's status
codes and messages (tensorflow_serving/servables/tensorflow/predict_util.cc,
tensorflow/cc/saved_model/util.cc, model_servers/get_model_status_impl.cc).

Where the real server fails badly, it refuses in one line instead: request tensors are sized
against what the request carries before anything is allocated (TensorFlow fills a short typed
field to the declared shape, so a few bytes could ask for terabytes), and a dtype other than
the signature's is named with its input (the Session's own message gives only an argument
number).

Unlike the real server it bounds how many Predict calls run at once (`--max-concurrent`) and
how many wait for a turn (`--max-queue`), refusing the rest with RESOURCE_EXHAUSTED: each run
takes every core and holds its activations, so a development machine is better off saying
"later" than swapping.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import os
import pathlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import grpc
import numpy as np
import tensorflow as tf
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from nst_client import tensors
from nst_model.session import DEFAULT_SIGNATURE, WARMUP_FILE, ServingSession, SessionClosed

MESSAGE_LIMIT = 1024  # the real server truncates longer error messages (grpc_status_util.cc)
T = TypeVar("T")
GRPC_OPTIONS = (("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1))
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
# Request tensors: no request carries more than the server's message limit (INT32_MAX bytes), and a
# typed field shorter than its shape (TensorFlow repeats the last value) is filled only up to
# MAX_FILL elements, the compact form small constants take; a bigger shape must bring its values.
MAX_TENSOR_BYTES = 2**31 - 1
MAX_FILL = 2**16
# The typed field TensorFlow reads each dtype from (tensor.cc ProtoHelper), and its values per element.
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: ("float_val", 1),
    types_pb2.DT_DOUBLE: ("double_val", 1),
    types_pb2.DT_HALF: ("half_val", 1),
    types_pb2.DT_BFLOAT16: ("half_val", 1),
    types_pb2.DT_INT32: ("int_val", 1),
    types_pb2.DT_INT16: ("int_val", 1),
    types_pb2.DT_INT8: ("int_val", 1),
    types_pb2.DT_UINT8: ("int_val", 1),
    types_pb2.DT_UINT16: ("int_val", 1),
    types_pb2.DT_INT64: ("int64_val", 1),
    types_pb2.DT_UINT32: ("uint32_val", 1),
    types_pb2.DT_UINT64: ("uint64_val", 1),
    types_pb2.DT_BOOL: ("bool_val", 1),
    types_pb2.DT_STRING: ("string_val", 1),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", 2),
}
SPARE_THREADS = 4  # threads beyond the run slots and the queue: health, metadata and status calls never wait
# Output dtypes and the TensorProto field the real server fills for them (Tensor::AsProtoField).
_PROTO_FIELDS = {
    np.dtype(np.float32): "float_val",
    np.dtype(np.float64): "double_val",
    np.dtype(np.int32): "int_val",
    np.dtype(np.int16): "int_val",
    np.dtype(np.int8): "int_val",
    np.dtype(np.uint8): "int_val",
    np.dtype(np.int64): "int64_val",
    np.dtype(np.bool_): "bool_val",
    np.dtype(object): "string_val",
}


class ServingError(Exception):
    """A failed call, with the status code and message the real server would return."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _join(names: Iterable[str]) -> str:
    return ",".join(sorted(names))  # the server joins std::set<string>: sorted


def log_line(line: str) -> None:
    """The dev server's log: one line to stderr."""
    print(line, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Model:
    """One model name with its loaded versions; the newest serves requests that name none.

    With `model_dir`, `poll()` (or the thread `start_polling` starts) follows the folder as the stock
    server does (file_system_storage_path_source.cc, aspired_versions_manager.cc): a new version folder
    is loaded and warmed up, then served; one that fails to load (half-written, corrupt) is logged in one
    line and tried again once its files change, while the loaded versions go on serving; a version whose
    folder is gone is unloaded, its Session closed once the calls it is running finish.
    """

    name: str
    versions: dict[int, ServingSession]  # replaced whole on each change: a reader's copy stays consistent
    model_dir: pathlib.Path | None = None
    log: Callable[[str], None] = log_line
    failed: dict[int, str] = dataclasses.field(default_factory=dict)  # version: why its folder failed to load
    _tried: dict[int, tuple] = dataclasses.field(default_factory=dict, repr=False)  # version: files when it failed
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)
    _poller: threading.Thread | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def load(
        cls, model_dir: str | os.PathLike, name: str | None = None, log: Callable[[str], None] | None = None
    ) -> Model:
        """Every numeric version folder under `model_dir`, as the server lays them out. A folder that fails
        to load is logged and left to `poll()`; an error only when none loads."""
        model_dir = pathlib.Path(model_dir)
        found = version_folders(model_dir)
        if not found:
            raise FileNotFoundError(f"no version folders (1, 2, ...) with a SavedModel under {model_dir}")
        model = cls(name or model_dir.resolve().name, {}, model_dir)
        model.log = log or model.log
        for version in found:
            model._try_load(version, warm=False)
        if not model.versions:
            raise OSError(f"no version folder loads (version {found[-1]}: {model.failed[found[-1]]})")
        return model

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join()
        for session in self.versions.values():
            session.close()

    def start_polling(self, interval_s: float) -> None:
        """Poll the model folder every `interval_s` seconds in a thread, until close()."""
        if self.model_dir is None:
            raise ValueError("a model without a folder has nothing to poll")

        def loop() -> None:
            unreadable = None
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                    unreadable = None
                except OSError as e:  # the folder itself is gone or unreadable: keep serving what is loaded
                    if str(e) != unreadable:
                        self.log(f"nst-devserver: cannot read {self.model_dir}: {e}; still serving what is loaded")
                    unreadable = str(e)

        self._poller = threading.Thread(target=loop, name="nst-devserver-poll", daemon=True)
        self._poller.start()

    def poll(self) -> None:
        """Load the version folders that appeared (or changed since they failed), unload those that went."""
        present = set(version_folders(self.model_dir))
        for version in sorted(set(self.versions) - present):
            self._unload(version)
        for version in set(self.failed) - present:
            del self.failed[version], self._tried[version]
        for version in sorted(present - set(self.versions)):
            if self._tried.get(version) != folder_state(self.model_dir / str(version)):
                self._try_load(version, warm=True)

    def _try_load(self, version: int, warm: bool) -> None:
        """Load (and with `warm`, warm up) one version and serve it; on failure, log one line and note why."""
        path = self.model_dir / str(version)
        state = folder_state(path)  # taken first: a change while loading makes the next poll try again
        session = None
        try:
            session = ServingSession(path)
            if warm:
                self._warm(version, session)
        except Exception as e:  # anything a half-written or corrupt folder makes the loader raise
            if session is not None:
                session.close()
            reason = _first_line(e)
            self.failed[version], self._tried[version] = reason, state
            others = ", ".join(str(v) for v in sorted(self.versions)) or "none"
            self.log(
                f"nst-devserver: cannot load version {version} from {path}: {reason}; still serving versions "
                f"{others}; trying again when its files change"
            )
            return
        self.failed.pop(version, None)
        self._tried.pop(version, None)
        self.versions = {**self.versions, version: session}
        if warm:
            self.log(f"nst-devserver: now serving version {version} of model {self.name!r} from {path}")

    def _unload(self, version: int) -> None:
        versions = dict(self.versions)
        session = versions.pop(version)
        self.versions = versions
        running = session.running
        session.close()  # at once if idle, else when its last call finishes
        self.log(
            f"nst-devserver: version {version} of model {self.name!r} is gone from {self.model_dir}: unloaded"
            + (f" once its {running} running calls finish" if running else "")
        )

    def warm_up(self) -> int:
        """Replay each version's warmup requests with no deadline, as the server does at load.

        Any failure fails the load. Returns how many requests ran.
        """
        return sum(self._warm(version, session) for version, session in self.versions.items())

    def _warm(self, version: int, session: ServingSession) -> int:
        path = pathlib.Path(session.path, WARMUP_FILE)
        if not path.exists():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                raise RuntimeError(f"{path}: only Predict warmup requests are supported here")
            try:
                _run_predict(session, version, log.predict_log.request, timeout_ms=0)
            except ServingError as e:
                raise RuntimeError(f"warmup of {self.name} version {version} failed: {e}") from None
            count += 1
        return count

    # ---- the three calls -------------------------------------------------------------------

    def predict(self, request: predict_pb2.PredictRequest, timeout_ms: int = 0) -> predict_pb2.PredictResponse:
        """PredictionService.Predict; `timeout_ms` (0: none) bounds the Session run, as the deadline does."""
        if not request.HasField("model_spec"):
            raise _invalid("Missing ModelSpec")
        version, session = self._servable(request.model_spec)
        return _run_predict(session, version, request, timeout_ms)

    def metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """PredictionService.GetModelMetadata: the SignatureDefs, the only metadata the server has."""
        if not request.HasField("model_spec"):
            raise _invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise _invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise _invalid(f"Metadata field {field} is not supported")
        version, session = self._servable(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in session.meta_graph.signature_def.items():
            signature_map.signature_def[key].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=model_pb2.ModelSpec(name=self.name))
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """ModelService.GetModelStatus: every loaded version is AVAILABLE, one that failed to load is END
        with the reason, as on the stock server."""
        if not request.HasField("model_spec"):
            raise _invalid("Missing ModelSpec")
        spec = request.model_spec
        loaded, failed = self.versions, dict(self.failed)
        if spec.HasField("version"):
            if spec.name != self.name or spec.version.value not in {*loaded, *failed}:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {spec.version.value} of model {spec.name}"
                )
            versions = [spec.version.value]
        elif spec.name != self.name:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        else:
            versions = sorted({*loaded, *failed}, reverse=True)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            if version in loaded:
                response.model_version_status.add(
                    version=version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
                )
            else:
                status = response.model_version_status.add(
                    version=version, state=get_model_status_pb2.ModelVersionStatus.END
                )
                status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                status.status.error_message = failed[version]
        return response

    def _servable(self, spec: model_pb2.ModelSpec) -> tuple[int, ServingSession]:
        """The version a ModelSpec asks for (server_core.cc, basic_manager.cc)."""
        if not spec.name:
            raise _invalid("ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            raise _invalid(f"Unrecognized servable version label: {spec.version_label}")
        versions = self.versions  # polling may replace it meanwhile
        version = spec.version.value if choice == "version" else max(versions, default=None)
        if spec.name != self.name or version not in versions:
            raise _not_found(spec, choice)
        return version, versions[version]


def _not_found(spec: model_pb2.ModelSpec, choice: str | None) -> ServingError:
    version = f"Specific({spec.name}, {spec.version.value})" if choice == "version" else f"Latest({spec.name})"
    return ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {version}")


def version_folders(model_dir: pathlib.Path) -> list[int]:
    """The numeric version folders under `model_dir`, as the server takes them (other names are ignored:
    an export's staging folder)."""
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def folder_state(path: pathlib.Path) -> tuple:
    """What a version folder holds (each file's name, size and time), to tell when a failed one changed."""
    state = []
    for folder, _, files in os.walk(path, followlinks=True):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed while we look
                stat = os.stat(os.path.join(folder, name))
                state.append((os.path.relpath(os.path.join(folder, name), path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(state))


def _first_line(error: Exception) -> str:
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _run_predict(
    session: ServingSession, version: int, request: predict_pb2.PredictRequest, timeout_ms: int
) -> predict_pb2.PredictResponse:
    """Predict on one loaded version, with the real server's checks (predict_util.cc RunPredict)."""
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    if name not in session.signatures:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
    signature = session.signatures[name]
    feeds = _input_values(signature, request)
    outputs = _output_aliases(signature, request.output_filter)
    try:
        values = session.run(name, feeds, outputs, timeout_ms=timeout_ms)
    except SessionClosed:  # unloaded between the choice of the version and the run
        raise _not_found(request.model_spec, request.model_spec.WhichOneof("version_choice")) from None
    except tf.errors.OpError as e:
        raise ServingError(_STATUS_CODES[e.error_code], e.message) from None
    response = predict_pb2.PredictResponse(
        model_spec=model_pb2.ModelSpec(name=request.model_spec.name, signature_name=name)
    )
    response.model_spec.version.value = version
    for alias, value in values.items():
        response.outputs[alias].CopyFrom(as_proto_field(value))
    return response


def _input_values(signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    """Request inputs, and signature defaults for the rest, exactly as the server admits them."""
    given, expected = set(request.inputs), set(signature.inputs)
    if len(given) > len(expected) or (len(given) < len(expected) and not signature.defaults):
        raise _invalid(
            f"input size does not match signature: {len(given)}!={len(expected)} len({{{_join(given)}}}) != "
            f"len({{{_join(expected)}}}). Sent extra: {{{_join(given - expected)}}}. "
            f"Missing but required: {{{_join(expected - given)}}}."
        )
    feeds = {}
    for alias in sorted(expected):
        if alias in given:
            proto = request.inputs[alias]
            _check_dtype(alias, proto, signature.inputs[alias])
        elif alias in signature.defaults:
            proto = signature.defaults[alias]
        else:
            raise _invalid(
                f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request {{{_join(given)}}}, "
                f"or default input alias set: {_join(signature.defaults)}"
            )
        feeds[alias] = tensor_from_proto(alias, proto)
    if given - expected:
        raise _invalid(
            f"Inputs contains invalid name. Used request inputs: {_join(given & expected)}, "
            f"request input: {_join(given)}"
        )
    return feeds


def dtype_name(enum: int) -> str:
    """A dtype as TensorFlow's C++ messages write it (DataTypeString): float, int32, string, resource."""
    try:
        return types_pb2.DataType.Name(enum).removeprefix("DT_").lower()
    except ValueError:
        return f"unknown dtype {enum}"


def _check_dtype(alias: str, proto: tensor_pb2.TensorProto, info: meta_graph_pb2.TensorInfo) -> None:
    """The Session refuses a dtype other than the signature's with "Expects arg[10] to be int32 but int64
    is provided", which names no input; this says the same with the input's name, before running."""
    if proto.dtype != info.dtype:
        wanted, sent = dtype_name(info.dtype), dtype_name(proto.dtype)
        raise _invalid(f"Expects input {alias} to be {wanted} but {sent} is provided")


def tensor_from_proto(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A request's TensorProto as an array, refused as the server's Tensor::FromProto refuses bad protos
    ("tensor parsing error: <alias>", with the reason here) and, before anything is allocated, when its
    declared size is more than a request carries: over MAX_TENSOR_BYTES, or a short typed field over MAX_FILL.

    Full `float_val` fields, the form the server's own outputs take and chunked clients send back,
    take a fast path (tf.make_ndarray reads them value by value).
    """

    def refuse(reason: str) -> ServingError:
        return _invalid(f"tensor parsing error: {alias}: {reason}")

    if proto.dtype in (types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT):
        raise refuse(f"{dtype_name(proto.dtype)} tensors cannot come from a request")
    if proto.dtype not in _VALUE_FIELDS:
        raise refuse(f"the dev server does not read {dtype_name(proto.dtype)} tensors")
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise refuse(f"the shape must be fully known; got {_shape(proto)}")
    count = math.prod(dims)
    itemsize = 1 if proto.dtype == types_pb2.DT_STRING else tf.as_dtype(proto.dtype).size
    if count * itemsize > MAX_TENSOR_BYTES:
        raise refuse(
            f"shape {_shape(proto)} declares {count} elements ({count * itemsize} bytes), "
            f"more than a request can carry ({MAX_TENSOR_BYTES} bytes)"
        )
    field, per_element = _VALUE_FIELDS[proto.dtype]
    if proto.tensor_content:
        if proto.dtype == types_pb2.DT_STRING:
            raise refuse("string tensors go in string_val, not tensor_content")
        if len(proto.tensor_content) != count * itemsize:
            raise refuse(
                f"tensor_content holds {len(proto.tensor_content)} bytes; shape {_shape(proto)} of "
                f"{dtype_name(proto.dtype)} needs {count * itemsize}"
            )
    else:
        given = len(getattr(proto, field)) // per_element
        if given > count:
            raise refuse(f"{field} has {given} values for shape {_shape(proto)} of {count} elements")
        if given < count and count > MAX_FILL:
            raise refuse(
                f"{field} has {given} values for shape {_shape(proto)} of {count} elements: send every value "
                f"(short fields are filled only up to {MAX_FILL} elements)"
            )
        if proto.dtype == types_pb2.DT_FLOAT and given == count:
            return tensors.to_array(proto)
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as e:
        raise refuse(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _shape(proto: tensor_pb2.TensorProto) -> str:
    return "<unknown>" if proto.tensor_shape.unknown_rank else str([d.size for d in proto.tensor_shape.dim])


def _output_aliases(signature: meta_graph_pb2.SignatureDef, output_filter: Iterable[str]) -> list[str] | None:
    """The outputs to fetch: the filter if any, checked as the server checks it; None for all."""
    aliases: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise _invalid(
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{_join(signature.outputs)}}}."
            )
        if alias in aliases:
            raise _invalid(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    return aliases or None


def as_proto_field(value: np.ndarray) -> tensor_pb2.TensorProto:
    """An output as the real server sends it: values in the typed repeated field, not tensor_content."""
    # A scalar string comes out of the Session as bytes; np.asarray would make it a fixed-width
    # numpy string and drop trailing NUL bytes.
    value = np.array(value, dtype=object) if isinstance(value, bytes) else np.asarray(value)
    field = _PROTO_FIELDS.get(value.dtype)
    if field is None:
        return tf.make_tensor_proto(value)
    if field == "float_val":
        return tensors.float_val_proto(value)  # the same message, without tens of MB of Python floats
    proto = tensor_pb2.TensorProto(
        dtype=tf.as_dtype(value.dtype).as_datatype_enum, tensor_shape=tf.TensorShape(value.shape).as_proto()
    )
    getattr(proto, field).extend(value.ravel().tolist())
    return proto


# ---- gRPC --------------------------------------------------------------------------------------


def _timeout_ms(context: grpc.ServicerContext) -> int:
    """The call's deadline as a Session run timeout; 0 (none) when the client set no deadline."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 2**31 / 1000:
        return 0
    return max(1, int(remaining * 1000))  # an expired deadline still stops the run at once


def _answer(context: grpc.ServicerContext, call: Callable[[], T]) -> T:
    """`call()`'s response, or the call aborted with the ServingError's code and (truncated) message."""
    try:
        return call()
    except ServingError as e:
        message = e.message if len(e.message) <= MESSAGE_LIMIT else e.message[:MESSAGE_LIMIT] + "...TRUNCATED"
        context.abort(e.code, message)


class RunSlots:
    """At most `running` Predict calls at once, at most `waiting` more queued for a turn.

    A call beyond the queue is refused at once with RESOURCE_EXHAUSTED, which clients may retry
    (nothing ran). A queued call whose deadline passes, or whose client cancels, leaves the queue
    without running.
    """

    def __init__(self, running: int, waiting: int):
        self.max_running, self.max_waiting = running, waiting
        self.running = 0
        self.waiting = 0
        self._turn = threading.Condition()

    @contextlib.contextmanager
    def hold(self, context: grpc.ServicerContext) -> Iterator[None]:
        """A run slot for the duration of the block, waiting in the queue if need be."""
        with self._turn:
            if self.running >= self.max_running:
                self._wait(context)
            self.running += 1
        try:
            yield
        finally:
            with self._turn:
                self.running -= 1
                self._turn.notify_all()

    def _wait(self, context: grpc.ServicerContext) -> None:
        """Wait (holding the lock) until a slot is free; raise if the queue is full or the call ends."""
        if self.waiting >= self.max_waiting:
            raise ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server busy: {self.max_running} running (--max-concurrent) and {self.max_waiting} queued "
                "(--max-queue) already; retry later",
            )
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        context.add_callback(self._wake)  # a cancelled call stops waiting at once
        self.waiting += 1
        try:
            while self.running >= self.max_running:
                if not context.is_active():
                    raise ServingError(grpc.StatusCode.CANCELLED, "the client cancelled the call while it was queued")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while queued for a run")
                self._turn.wait(left)
        finally:
            self.waiting -= 1

    def _wake(self) -> None:
        with self._turn:
            self._turn.notify_all()


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService: Predict (bounded by `slots`) and GetModelMetadata."""

    def __init__(self, model: Model, slots: RunSlots):
        self.model = model
        self.slots = slots

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        def run() -> predict_pb2.PredictResponse:
            with self.slots.hold(context):
                return self.model.predict(request, _timeout_ms(context))  # the deadline left after queueing

        return _answer(context, run)

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return _answer(context, lambda: self.model.metadata(request))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: GetModelStatus."""

    def __init__(self, model: Model):
        self.model = model

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        return _answer(context, lambda: self.model.status(request))


def serve(
    model: Model,
    host: str = "127.0.0.1",
    port: int = 8500,
    *,
    slots: RunSlots | None = None,
    credentials: grpc.ServerCredentials | None = None,
    health_checks: health.HealthServicer | None = None,
) -> tuple[grpc.Server, int]:
    """Start serving `model`, with Predict calls bounded by `slots` (default: one run per CPU,
    four queued per CPU) and over TLS with `credentials`; returns the server and its port
    (useful with port 0: any free one).

    grpc.health.v1.Health answers for the server as a whole (service ""), as tensorflow_model_server
    --enable_grpc_healthcheck_service does: SERVING from the start (the model is loaded and warmed by
    then) until `health_checks.enter_graceful_shutdown()`. It runs on the spare threads, so a probe is
    answered at once while calls run and wait."""
    cores = os.cpu_count() or 1
    slots = slots or RunSlots(running=cores, waiting=4 * cores)
    # A queued call holds a thread, so the pool covers the slots and the queue; gRPC refuses
    # calls beyond it (RESOURCE_EXHAUSTED) rather than queueing them where no deadline is checked.
    threads = slots.max_running + slots.max_waiting + SPARE_THREADS
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="nst-devserver"),
        options=GRPC_OPTIONS,
        maximum_concurrent_rpcs=threads,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(model, slots), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(model), server)
    health_checks = health_checks or health.HealthServicer()
    health_checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_checks, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as e:
        raise OSError(f"cannot listen on {address}: {e}") from None
    server.start()
    return server, bound


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with `client_ca`, clients must present a certificate it signed."""
    roots = pathlib.Path(client_ca).read_bytes() if client_ca else None
    key_and_chain = (pathlib.Path(key).read_bytes(), pathlib.Path(cert).read_bytes())
    return grpc.ssl_server_credentials([key_and_chain], root_certificates=roots, require_client_auth=bool(roots))
