"""The REST API of nst-devserver: TensorFlow Serving's `/v1/models` endpoints over the same models and run slots.

Readiness probes and many callers speak REST, so the development server answers it the way
`tensorflow_model_server --rest_api_port` does (release 2.20.0): the paths of
model_servers/http_rest_api_util.cc, the dispatch of http_rest_api_handler.cc, the status codes
of http_server.cc and the JSON of util/json_tensor.cc, messages included. That means the stock
server's rules, not gRPC's: the JSON is typed by the signature (so dtypes always match), and the
columnar `inputs` object must name *every* signature input, defaults or not; extra names are
ignored. Row `instances` add a batch dimension, which this model's scalar inputs refuse.

Predict calls take a turn in the same RunSlots as gRPC (RESOURCE_EXHAUSTED: HTTP 429 when
full), and `timeout_ms` plays `--rest_api_timeout_in_ms`: it bounds the Session run, and here
the time queued for a slot too. Not served: classify and regress (501), Prometheus metrics.

Unlike the stock server, it bounds what one client may send or hold: the body's size (checked
before it is read), the values and nesting of its JSON, the connections and their threads, idle
and slow clients (MAX_BODY_BYTES and the limits after it; docs/serving.md compares them with the
stock server's). Status and metadata calls never wait for a run slot, and the body of a Predict is
read and parsed only once the call holds one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.server
import io
import json
import math
import re
import select
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2

from nst_devserver.serving import Model, RunSlots, ServingError, _invalid, dtype_name
from nst_model.session import DEFAULT_SIGNATURE

REST_TIMEOUT_MS = (
    600_000  # what Dockerfile.serving passes as --rest_api_timeout_in_ms (the server's own default: 30000)
)
# The stock server's paths (http_rest_api_util.cc), matched whole and case-insensitively; other /v1 paths
# are "Malformed request" (400), and paths outside /v1 never reach the handler (404, no JSON).
_HANDLED = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)
# Status codes as HTTP (http_server.cc ToHTTPStatusCode).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_INT_RANGES = {  # dtype -> the JSON integers it takes (rapidjson IsInt, IsInt64, IsUint, IsUint64)
    types_pb2.DT_INT32: (-(2**31), 2**31 - 1, "int_val"),
    types_pb2.DT_INT16: (-(2**31), 2**31 - 1, "int_val"),
    types_pb2.DT_INT8: (-(2**31), 2**31 - 1, "int_val"),
    types_pb2.DT_UINT8: (-(2**31), 2**31 - 1, "int_val"),
    types_pb2.DT_INT64: (-(2**63), 2**63 - 1, "int64_val"),
    types_pb2.DT_UINT32: (0, 2**32 - 1, "uint32_val"),
    types_pb2.DT_UINT64: (0, 2**64 - 1, "uint64_val"),
}
_FLOAT_FIELDS = {types_pb2.DT_FLOAT: ("float_val", np.float32, 9), types_pb2.DT_DOUBLE: ("double_val", np.float64, 17)}
_DEBUG_LIMIT = 256  # json_tensor.cc kMaxJsonDebugStringBytes: longer values are cut in messages

# What one client may ask of the REST port (the stock server sets none of these: docs/serving.md, "REST limits").
MAX_BODY_BYTES = 64 * 2**20  # a request body: two 24 MB images in base64; larger images go over gRPC (2 GiB)
MAX_JSON_VALUES = 2**22  # values in a request document (each costs tens of bytes once parsed)
MAX_JSON_DEPTH = 64  # nesting of arrays and objects (a tensor of rank 60 inside "instances" still fits)
IDLE_TIMEOUT_S = 30.0  # a connection waiting for its next request is closed after this
REQUEST_TIMEOUT_S = 60.0  # a request's line, headers and body must arrive within this; each response is sent within it
SPARE_CONNECTIONS = 16  # connections beyond the run slots and the queue: status calls and requests being read
_PIECE_BYTES = 2**20  # bodies are read in pieces of at most this
_CHUNK_LINE_BYTES = 1024  # a chunk's size line (hex digits and extensions) is at most this long
_INT_LIMITS = (-(2**63), 2**64 - 1)  # JSON integers kept as integers (rapidjson Int64, Uint64); others are doubles


# ---- JSON in --------------------------------------------------------------------------------------


def _json_type(value: object) -> str:
    """rapidjson's type names, used in the stock server's messages."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def _debug(value: object) -> str:
    """A value as the server quotes it in errors: rapidjson's pretty layout, arrays on one line,
    stopped once 256 bytes are written (so it may end mid-value)."""
    out: list[str] = []
    size = 0
    for piece in _pretty(value, 0):
        if size >= _DEBUG_LIMIT:
            break
        out.append(piece)
        size += len(piece.encode())
    return "".join(out)


def _pretty(value: object, level: int) -> Iterator[str]:
    if isinstance(value, dict):
        if not value:
            yield "{}"
            return
        for i, (key, item) in enumerate(value.items()):
            yield ("{" if i == 0 else ",") + "\n" + "    " * (level + 1) + json.dumps(key, ensure_ascii=False) + ": "
            yield from _pretty(item, level + 1)
        yield "\n" + "    " * level + "}"
    elif isinstance(value, list):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ", "
            yield from _pretty(item, level)
        yield "]"
    else:
        yield json.dumps(value, ensure_ascii=False)


def _number(text: str) -> int | float:
    """A JSON number as rapidjson reads it: an integer while it fits 64 bits, else a double, and
    refused when no double holds it (never a 5000-digit Python int, nor an infinity)."""
    if "." not in text and "e" not in text and "E" not in text and len(text) <= 21:
        value = int(text)
        if _INT_LIMITS[0] <= value <= _INT_LIMITS[1]:
            return value
    value = float(text)
    if math.isinf(value):
        raise _invalid("JSON Parse error: Number too big to be stored in double.")
    return value


def _first_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose repeated keys keep their first value, as rapidjson's FindMember finds it."""
    members: dict[str, Any] = {}
    for key, value in pairs:
        members.setdefault(key, value)
    return members


def _too_deep(doc: object) -> bool:
    """Whether arrays and objects nest deeper than MAX_JSON_DEPTH (checked without recursion)."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        items = value.values() if isinstance(value, dict) else value
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((item, depth + 1) for item in items if isinstance(item, list | dict))
    return False


_DECODER = json.JSONDecoder(parse_int=_number, parse_float=_number, object_pairs_hook=_first_keys)


def _parse_json(body: bytes) -> Any:
    """The request document, read as the server reads it: NaN and Infinity allowed, anything after
    the first complete value ignored, and a top-level object required; within the dev server's
    bounds on values and nesting, so that no document costs more than a few times its size."""
    values = body.count(b",") + body.count(b"[") + body.count(b"{") + 1  # at least as many as it holds
    if values > MAX_JSON_VALUES:
        raise _invalid(
            f"JSON Parse error: more than {MAX_JSON_VALUES} values (nst-devserver's limit); send images as b64"
        )
    text = body.decode("utf-8", errors="replace")
    start = len(text) - len(text.lstrip())
    if start == len(text):
        raise _invalid("JSON Parse error: The document is empty")
    depth_error = _invalid(f"JSON Parse error: arrays and objects nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        doc, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise _invalid(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    except RecursionError:
        raise depth_error from None
    if _too_deep(doc):
        raise depth_error
    if not isinstance(doc, dict):
        raise _invalid(f"JSON Value: {_debug(doc)} Is not object")
    return doc


def _is_b64(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _dense_shape(value: object) -> list[int]:
    """A nested list's shape, read along first elements (GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _type_error(value: object, dtype: int) -> ServingError:
    return _invalid(
        f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected type: {dtype_name(dtype)}"
    )


def _add_value(value: object, dtype: int, proto: tensor_pb2.TensorProto) -> None:
    """One JSON scalar into the tensor's typed field, refused unless the dtype holds it (AddValueToTensor)."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if dtype in _FLOAT_FIELDS:
        if not is_number:
            raise _type_error(value, dtype)
        getattr(proto, _FLOAT_FIELDS[dtype][0]).append(value)
    elif dtype in _INT_RANGES:
        low, high, field = _INT_RANGES[dtype]
        if not (is_number and isinstance(value, int) and low <= value <= high):
            raise _type_error(value, dtype)
        getattr(proto, field).append(value)
    elif dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        proto.string_val.append(value.encode())
    elif dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        proto.bool_val.append(value)
    else:
        raise ServingError(
            grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: {_debug(value)} to type: {dtype_name(dtype)}"
        )


def _decode_b64(value: object) -> bytes:
    if not _is_b64(value):
        raise _invalid(f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("Unable to base64 decode") from None


def _fill(value: object, level: int, shape: list[int], dtype: int, proto: tensor_pb2.TensorProto) -> int:
    """Values of a nested list into `proto`, checked against `shape` level by level (FillTensorProto)."""
    if not isinstance(value, list):
        if level != len(shape):
            raise _invalid(
                f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            proto.string_val.append(_decode_b64(value))
        else:
            _add_value(value, dtype, proto)
        return 1
    if level >= len(shape):
        raise _invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise _invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    return sum(_fill(item, level + 1, shape, dtype, proto) for item in value)


def _tensor(value: object, dtype: int) -> tuple[tensor_pb2.TensorProto, list[int], int]:
    """One JSON value as a TensorProto of the signature's dtype, its item shape and value count."""
    shape = _dense_shape(value)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    count = _fill(value, 0, shape, dtype, proto)
    return proto, shape, count


def _set_shape(proto: tensor_pb2.TensorProto, shape: list[int]) -> None:
    proto.tensor_shape.Clear()
    for size in shape:
        proto.tensor_shape.dim.add(size=size)


def _inputs_from_columns(value: object, infos: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, Any]:
    """The columnar form: one value for a one-input signature, else an object naming every input
    (FillTensorMapFromInputsMap; names the signature lacks are ignored)."""
    tensors = {}
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise _invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        ((name, info),) = infos.items()
        proto, shape, _ = _tensor(value, info.dtype)
        _set_shape(proto, shape)
        return {name: proto}
    for name in sorted(infos):
        if name not in value:
            raise _invalid(f"Missing named input: {name} in 'inputs' object.")
        proto, shape, _ = _tensor(value[name], infos[name].dtype)
        _set_shape(proto, shape)
        tensors[name] = proto
    return tensors


def _inputs_from_rows(rows: list, infos: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, Any]:
    """The row form: each instance one slice of a batch, so every input gains a leading dimension
    of len(instances) (FillTensorMapFromInstancesList)."""
    if not isinstance(rows[0], dict) and len(infos) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map"
        )
    objects = isinstance(rows[0], dict) and not _is_b64(rows[0])
    tensors: dict[str, tensor_pb2.TensorProto] = {}
    shapes: dict[str, tuple[list[int], int]] = {}

    def add(item: object, name: str) -> None:
        if name not in infos:
            raise _invalid(f"JSON object: does not have named input: {name}")
        proto = tensors.setdefault(name, tensor_pb2.TensorProto(dtype=infos[name].dtype))
        shape = _dense_shape(item)
        count = _fill(item, 0, shape, infos[name].dtype, proto)
        first_shape, first_count = shapes.setdefault(name, (shape, count))
        if first_count != count:
            raise _invalid(f"Expecting tensor size: {first_count} but got: {count}")
        if first_shape != shape:
            raise _invalid(
                f"Expecting shape [{','.join(map(str, first_shape))}] but got: [{','.join(map(str, shape))}]"
            )

    for index, row in enumerate(rows):
        row_is_object = isinstance(row, dict) and not _is_b64(row)
        if objects:
            if not row_is_object:
                raise _invalid(f"Expecting object but got list at item {index} of input list")
            for name, item in row.items():
                try:
                    add(item, name)
                except ServingError as e:
                    raise _invalid(
                        f"Failed to process element: {index} key: {name} of 'instances' list. "
                        f"Error: INVALID_ARGUMENT: {e.message}"
                    ) from None
            if set(row) != set(infos):
                raise _invalid(
                    f"Failed to process element: {index} of 'instances' list. JSON object: {_debug(row)} keys must be "
                    f"equal to: {','.join(sorted(infos))}"
                )
        else:
            if row_is_object:
                raise _invalid(f"Expecting value/list but got object at item {index} of input list")
            try:
                add(row, min(infos))  # the server takes its map's first entry
            except ServingError as e:
                raise _invalid(
                    f"Failed to process element: {index} of 'instances' list. Error: INVALID_ARGUMENT: {e.message}"
                ) from None
    for name, proto in tensors.items():
        _set_shape(proto, [len(rows), *shapes[name][0]])
    return tensors


# ---- JSON out -------------------------------------------------------------------------------------


def _decimal(value: float, numpy_type: type, digits: int) -> str:
    """A float as the server writes it (WriteDecimal): six significant digits when they read back
    to the same value, else full precision; ".0" on whole numbers; NaN and Infinity as tokens."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:.6g}"
    if numpy_type(float(text)) != numpy_type(value):
        text = f"{value:.{digits}g}"
    return text if "." in text or "e" in text else text + ".0"


def _scalar_writer(proto: tensor_pb2.TensorProto, name: str) -> Callable[[object], str]:
    """How one element of an output is written (AddSingleValueAndAdvance): strings named *_bytes as
    {"b64": ...}, other strings as text."""
    dtype = proto.dtype
    if dtype in _FLOAT_FIELDS:
        _, numpy_type, digits = _FLOAT_FIELDS[dtype]
        return lambda v: _decimal(v, numpy_type, digits)
    if dtype in _INT_RANGES:
        return lambda v: str(int(v))
    if dtype == types_pb2.DT_BOOL:
        return lambda v: "true" if v else "false"
    if dtype == types_pb2.DT_STRING:
        if name.endswith("_bytes"):
            return lambda v: json.dumps({"b64": base64.b64encode(v).decode()})
        return lambda v: json.dumps(v.decode("utf-8", errors="replace"), ensure_ascii=False)
    raise _invalid(f"Failed to write JSON value for tensor type: {dtype_name(dtype)}")


def _nested(value: object, write: Callable[[object], str]) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_nested(item, write) for item in value) + "]"
    return write(value)


def _outputs_json(outputs: Mapping[str, tensor_pb2.TensorProto], rows: bool) -> str:
    """The response body (MakeJsonFromTensors): {"outputs": ...} for a columnar request, one entry
    per batch item in {"predictions": [...]} for a row request; a single output goes unnamed."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    values = {name: tf.make_ndarray(outputs[name]).tolist() for name in names}
    writers = {name: _scalar_writer(outputs[name], name) for name in names}
    if not rows:
        if len(names) == 1:
            return '{"outputs": ' + _nested(values[names[0]], writers[names[0]]) + "}"
        fields = (f"{json.dumps(name)}: {_nested(values[name], writers[name])}" for name in names)
        return '{"outputs": {' + ", ".join(fields) + "}}"
    batch = -1
    for name in names:
        dims = outputs[name].tensor_shape.dim
        if not dims:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and dims[0].size != batch:
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {dims[0].size} expecting: {batch}")
        batch = dims[0].size
    items = []
    for index in range(batch):
        if len(names) == 1:
            items.append(_nested(values[names[0]][index], writers[names[0]]))
        else:
            fields = (f"{json.dumps(name)}: {_nested(values[name][index], writers[name])}" for name in names)
            items.append("{" + ", ".join(fields) + "}")
    return '{"predictions": [' + ", ".join(items) + "]}"


def _proto_json(message: Any, *, field_names: bool) -> str:
    """A response proto as the server prints it: every field, int64 as strings."""
    return json_format.MessageToJson(
        message, preserving_proto_field_name=field_names, always_print_fields_with_no_presence=True, indent=1
    )


# ---- the API --------------------------------------------------------------------------------------


class _RestCall:
    """What RunSlots asks of a call, for an HTTP request: the time it has left and whether its client
    is still connected (seen when the queue wakes it: HTTP gives no signal of a disconnect)."""

    def __init__(self, connection: socket.socket, timeout_ms: int):
        self._connection = connection
        self._deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms > 0 else None

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def is_active(self) -> bool:
        """False once the client has closed its end (poll, unlike select, takes any descriptor number)."""
        try:
            poller = select.poll()
            poller.register(self._connection, select.POLLIN)
            return not poller.poll(0) or self._connection.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False

    def run_timeout_ms(self) -> int:
        """The Session run's timeout: what is left of the REST timeout (0: none)."""
        left = self.time_remaining()
        return 0 if left is None else max(1, int(left * 1000))


class RestApi:
    """The /v1 request handling, apart from HTTP: (method, path, body) in, JSON text out or ServingError."""

    def __init__(self, model: Model, slots: RunSlots, timeout_ms: int = REST_TIMEOUT_MS):
        self.model = model
        self.slots = slots
        self.timeout_ms = timeout_ms

    def process(self, method: str, path: str, read_body: Callable[[], bytes], connection: socket.socket) -> str:
        """One request (HttpRestApiHandler::ProcessRequest): the path's model, version or label and verb.
        Only Predict reads the body (`read_body`), once it holds a run slot."""
        pattern = _PREDICT_PATH if method == "POST" else _STATUS_PATH if method == "GET" else None
        match = pattern.fullmatch(path) if pattern else None
        if match is None:
            raise _invalid(f"Malformed request: {method} {path}")
        name, version, label, verb = match.groups()
        spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name or ""))
        if version is not None:
            if int(version) >= 2**63:
                raise _invalid(f"Failed to convert version: {version} to numeric.")
            spec.version.value = int(version)
        if label is not None:
            spec.version_label = urllib.parse.unquote(label)
        if method == "GET":
            if not spec.name:
                raise _invalid("Missing model name in request.")
            return self._metadata(spec) if verb == "metadata" else self._status(spec)
        if verb == "predict":
            return self._predict(spec, read_body, connection)
        if verb in ("classify", "regress"):
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"nst-devserver does not implement {verb}")
        raise _invalid(f"Malformed request: {method} {path}")

    def _status(self, spec: model_pb2.ModelSpec) -> str:
        response = self.model.status(get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
        for version_status in response.model_version_status:
            version_status.status.SetInParent()  # the server always reports the health: error_code OK
        return _proto_json(response, field_names=False)

    def _signatures(self, spec: model_pb2.ModelSpec) -> tuple[int, get_model_metadata_pb2.SignatureDefMap]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
        response = self.model.metadata(request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return response.model_spec, signatures

    def _metadata(self, spec: model_pb2.ModelSpec) -> str:
        served_spec, signatures = self._signatures(spec)
        return (
            '{\n"model_spec":' + _proto_json(served_spec, field_names=True) + ',\n"metadata": {"signature_def": '
            + _proto_json(signatures, field_names=True) + "}\n}\n"
        )  # fmt: skip

    def _predict(self, spec: model_pb2.ModelSpec, read_body: Callable[[], bytes], connection: socket.socket) -> str:
        """The body is read and parsed inside a run slot, so only as many documents as run at once are in
        memory; a call refused as busy has sent nothing more than its headers."""
        call = _RestCall(connection, self.timeout_ms)
        with self.slots.hold(call):
            request, rows = self._predict_request(spec, _parse_json(read_body()))
            response = self.model.predict(request, call.run_timeout_ms())
        return _outputs_json(response.outputs, rows)

    def _predict_request(self, spec: model_pb2.ModelSpec, doc: dict) -> tuple[predict_pb2.PredictRequest, bool]:
        """The PredictRequest a document asks for, and whether it is in the row form."""
        if "signature_name" in doc:
            if not isinstance(doc["signature_name"], str):
                raise _invalid(
                    f"JSON Value: {_debug(doc)} not formatted correctly. 'signature_name' key must be a string value."
                )
            spec.signature_name = doc["signature_name"]
        _, signatures = self._signatures(spec)  # the servable's signature types the JSON (GetInfoMap)
        key = spec.signature_name or DEFAULT_SIGNATURE
        if key not in signatures.signature_def:
            raise _invalid(f'Serving signature name: "{key}" not found in signature def')
        infos = signatures.signature_def[key].inputs
        if not infos:
            raise _invalid(f"Failed to get input map for signature: {spec.signature_name or 'DEFAULT'}")
        rows = "instances" in doc
        if rows and "inputs" in doc:
            raise _invalid(
                f"JSON Value: {_debug(doc)} Not formatted correctly expecting only one of 'inputs' or 'instances' "
                "keys to exist "
            )
        if rows:
            if not isinstance(doc["instances"], list):
                raise _invalid(f"JSON Value: {_debug(doc)} Expecting 'instances' to be an list/array")
            if not doc["instances"]:
                raise _invalid(f"JSON Value: {_debug(doc)} No values in 'instances' array")
            tensors = _inputs_from_rows(doc["instances"], infos)
        elif "inputs" in doc:
            tensors = _inputs_from_columns(doc["inputs"], infos)
        else:
            raise _invalid("Missing 'inputs' or 'instances' key")
        request = predict_pb2.PredictRequest(model_spec=spec)
        for name, proto in tensors.items():
            request.inputs[name].CopyFrom(proto)
        return request, rows


# ---- HTTP -----------------------------------------------------------------------------------------


class _HttpError(Exception):
    """A request refused for its framing (status 400, 408 or 413); the connection is closed after the answer."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _Connection(io.RawIOBase):
    """A connection's socket as a file that never waits past its deadline: reads stop at `deadline`
    (set per request), and each write is given REQUEST_TIMEOUT_S at most."""

    def __init__(self, sock: socket.socket, send_timeout_s: float):
        self._sock = sock
        self._send_timeout_s = send_timeout_s
        self.deadline = time.monotonic()

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client took too long to send")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)

    def write(self, data: Any) -> int:
        self._sock.settimeout(self._send_timeout_s)
        self._sock.sendall(data)
        return len(data)


class _Handler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as the stock server's libevent front end, with its limits: a body's size
    is checked before it is read, and idle and slow clients are timed out."""

    protocol_version = "HTTP/1.1"
    server: _RestServer

    def setup(self) -> None:
        self.connection = self.request
        self._io = _Connection(self.connection, self.server.request_timeout_s)
        self.rfile = io.BufferedReader(self._io, 2**16)
        self.wfile = self._io

    def handle_one_request(self) -> None:
        """Wait for the next request at most IDLE_TIMEOUT_S (evictable meanwhile), then read it within
        REQUEST_TIMEOUT_S."""
        self._io.deadline = time.monotonic() + self.server.idle_timeout_s
        self.server.set_idle(self.connection, True)
        try:
            started = self.rfile.peek(1)
        except OSError:  # timed out, evicted or reset
            started = b""
        finally:
            self.server.set_idle(self.connection, False)
        if not started:
            self.close_connection = True
            return
        self._io.deadline = time.monotonic() + self.server.request_timeout_s
        super().handle_one_request()

    def handle_expect_100(self) -> bool:
        """Send "100 Continue" only when the body is wanted (_read_body), not for every request."""
        return True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet, as the stock server (it logs requests only at VLOG(1))."""

    def _dispatch(self, method: str) -> None:
        path = urllib.parse.urlsplit(self.path).path
        try:
            self._body_left = self._framing()
        except _HttpError as e:
            self._body_left = True
            self._send(e.code, json.dumps({"error": e.message}, indent=4).encode(), "application/json")
            return
        if not _HANDLED.fullmatch(path):
            self._send(404, b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
                       b"</BODY></HTML>\n", "text/html")  # fmt: skip
            return
        try:
            if method == "OPTIONS":  # a CORS preflight (http_server.cc)
                if not re.search(r"https?://", self.headers.get("Origin", "")):
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION, "Origin header is missing in CORS preflight"
                    )
                text = ""
            else:
                text = self.server.api.process(method, path, self._read_body, self.connection)
            code = 200
        except ServingError as e:
            code, text = HTTP_STATUS.get(e.code, 500), json.dumps({"error": e.message}, indent=4, ensure_ascii=False)
        except _HttpError as e:
            code, text = e.code, json.dumps({"error": e.message}, indent=4)
        except TimeoutError:
            code, text = 408, json.dumps({"error": f"the body did not arrive within {self._timeout()}"}, indent=4)
        except ConnectionError:  # the client left mid-body: nobody to answer
            self.close_connection = True
            return
        except Exception as e:  # a bug here must still answer, as INTERNAL
            code, text = 500, json.dumps({"error": f"nst-devserver: {type(e).__name__}: {e}"}, indent=4)
        self._send(code, text.encode(), "application/json")

    def _timeout(self) -> str:
        return f"{self.server.request_timeout_s:g} s (nst-devserver's limit)"

    def _framing(self) -> int | bool:
        """The body's length from the headers, or True for a chunked one; refused before anything is read
        when it is malformed (400) or over MAX_BODY_BYTES (413)."""
        if self.headers.get("Transfer-Encoding", "").strip().lower() == "chunked":
            return True
        text = self.headers.get("Content-Length")
        if text is None:
            return 0
        if not re.fullmatch(r"\s*[0-9]{1,20}\s*", text):
            raise _HttpError(400, f"Content-Length must be a non-negative integer; got {text[:40]!r}")
        length = int(text)
        if length > MAX_BODY_BYTES:
            raise self._too_large(f"{length} bytes")
        return length

    def _too_large(self, size: str) -> _HttpError:
        return _HttpError(
            413,
            f"the request body ({size}) is over nst-devserver's limit of {MAX_BODY_BYTES} bytes: "
            "send large images over gRPC",
        )

    def _read_body(self) -> bytes:
        """The body, read in pieces within the request's deadline; chunked bodies checked chunk by chunk."""
        if self.headers.get("Expect", "").lower() == "100-continue" and self._body_left:
            self.send_response_only(100)
            self.end_headers()
        body = self._read_chunked() if self._body_left is True else self._read_exact(self._body_left)
        self._body_left = False
        return body

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(_CHUNK_LINE_BYTES)
            match = re.fullmatch(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n", line)
            if not match:
                if not line.endswith(b"\n") and len(line) < _CHUNK_LINE_BYTES:
                    raise ConnectionAbortedError("the client closed the connection mid-body")
                raise _HttpError(400, f"bad chunk size line: {line[:40]!r}")
            size = int(match[1], 16)
            if size == 0:
                break
            if len(body) + size > MAX_BODY_BYTES:
                raise self._too_large(f"over {len(body) + size} bytes, chunked")
            body += self._read_exact(size)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _HttpError(400, "a chunk is longer than its size line says")
        for _ in range(100):  # trailer lines, ignored
            if self.rfile.readline(2**16) in (b"\r\n", b"\n", b""):
                break
        return bytes(body)

    def _read_exact(self, size: int) -> bytes:
        body = bytearray()
        while len(body) < size:
            piece = self.rfile.read1(min(_PIECE_BYTES, size - len(body)))
            if not piece:
                raise ConnectionAbortedError("the client closed the connection mid-body")
            body += piece
        return bytes(body)

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        """The answer; a body left unread (refused, or not needed) closes the connection after it."""
        if self._body_left:
            self.close_connection = True
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client left (Ctrl-C, its own timeout) or stopped reading: nobody to tell
            self.close_connection = True


class _RestServer(http.server.ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` of them: when all are taken, the connection
    that has waited longest for its next request is closed to make room, and with none waiting a new
    connection gets 503 at once. So idle clients cannot starve status calls, and the REST port never
    takes threads that gRPC needs."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the listen backlog: a burst of connections is accepted, then admitted or refused

    def __init__(
        self,
        address: tuple[str, int],
        api: RestApi,
        family: socket.AddressFamily,
        *,
        max_connections: int,
        idle_timeout_s: float,
        request_timeout_s: float,
    ):
        self.address_family = family
        self.api = api
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.request_timeout_s = request_timeout_s
        self._free = threading.BoundedSemaphore(max_connections)
        self._idle: dict[socket.socket, float] = {}  # connection -> since when it waits for a request
        self._idle_lock = threading.Lock()
        super().__init__(address, _Handler)

    def set_idle(self, connection: socket.socket, idle: bool) -> None:
        with self._idle_lock:
            if idle:
                self._idle[connection] = time.monotonic()
            else:
                self._idle.pop(connection, None)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._admit():
            self._refuse(request)
            return
        self.set_idle(request, True)  # until it sends a request, a new connection may make room for others
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread to be had
            self.set_idle(request, False)
            self._free.release()
            self._refuse(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.set_idle(request, False)
            self._free.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets its connection is no error of the server's: no traceback for it."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def _admit(self) -> bool:
        """A connection thread for a new connection, made free by closing the longest idle one if need be."""
        if self._free.acquire(blocking=False):
            return True
        with self._idle_lock:
            oldest = min(self._idle, key=self._idle.__getitem__, default=None)
        if oldest is None:
            return False
        with contextlib.suppress(OSError):
            oldest.shutdown(socket.SHUT_RDWR)  # its thread sees the end of the stream and exits
        return self._free.acquire(timeout=1.0)

    def _refuse(self, request: socket.socket) -> None:
        """503 without a thread, never waiting on the client."""
        data = json.dumps(
            {"error": f"nst-devserver: all {self.max_connections} REST connections are busy; retry later"}
        ).encode()
        with contextlib.suppress(OSError):
            request.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                request.recv(2**16)  # what the client sent already: closing over unread data would reset
            request.send(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
        self.shutdown_request(request)


def serve_rest(
    model: Model,
    host: str,
    port: int,
    slots: RunSlots,
    *,
    timeout_ms: int = REST_TIMEOUT_MS,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> tuple[http.server.ThreadingHTTPServer, int]:
    """Serve `model`'s REST API on host:port (0: any free port) in a background thread, Predict calls
    sharing `slots` with gRPC; returns the server and its port. Stop it with server.shutdown()
    and server.server_close().

    Connections are bounded like gRPC's threads: the run slots and the queue, plus SPARE_CONNECTIONS."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        server = _RestServer(
            (host, port),
            RestApi(model, slots, timeout_ms),
            family,
            max_connections=slots.max_running + slots.max_waiting + SPARE_CONNECTIONS,
            idle_timeout_s=idle_timeout_s,
            request_timeout_s=request_timeout_s,
        )
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port} for REST: {e.strerror or e}") from None
    threading.Thread(target=server.serve_forever, name="nst-devserver-rest", daemon=True).start()
    return server, server.server_address[1]


@contextlib.contextmanager
def rest_server(model: Model, host: str, port: int, slots: RunSlots, **options: Any) -> Iterator[int]:
    """serve_rest for the length of a block; yields the port."""
    server, bound = serve_rest(model, host, port, slots, **options)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
