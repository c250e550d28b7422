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
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.server
import json
import math
import re
import select
import socket
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


def _parse_json(body: bytes) -> Any:
    """The request document, read as the server reads it: NaN and Infinity allowed, anything after
    the first complete value ignored, and a top-level object required."""
    text = body.decode("utf-8", errors="replace")
    start = len(text) - len(text.lstrip())
    if start == len(text):
        raise _invalid("JSON Parse error: The document is empty")
    try:
        doc, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise _invalid(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
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
        try:
            readable, _, _ = select.select([self._connection], [], [], 0)
            return not readable or self._connection.recv(1, socket.MSG_PEEK) != b""
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

    def process(self, method: str, path: str, body: bytes, connection: socket.socket) -> str:
        """One request (HttpRestApiHandler::ProcessRequest): the path's model, version or label and verb."""
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
            return self._predict(spec, body, connection)
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

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes, connection: socket.socket) -> str:
        doc = _parse_json(body)
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
        call = _RestCall(connection, self.timeout_ms)
        with self.slots.hold(call):
            response = self.model.predict(request, call.run_timeout_ms())
        return _outputs_json(response.outputs, rows)


# ---- HTTP -----------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as the stock server's libevent front end."""

    protocol_version = "HTTP/1.1"
    server: _RestServer

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
        body = self._body()
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
                text = self.server.api.process(method, path, body, self.connection)
            code = 200
        except ServingError as e:
            code, text = HTTP_STATUS.get(e.code, 500), json.dumps({"error": e.message}, indent=4, ensure_ascii=False)
        except Exception as e:  # a bug here must still answer, as INTERNAL
            code, text = 500, json.dumps({"error": f"nst-devserver: {type(e).__name__}: {e}"}, indent=4)
        self._send(code, text.encode(), "application/json")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client left (Ctrl-C, its own timeout): nobody to tell
            self.close_connection = True


class _RestServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], api: RestApi, family: socket.AddressFamily):
        self.address_family = family
        self.api = api
        super().__init__(address, _Handler)


def serve_rest(
    model: Model, host: str, port: int, slots: RunSlots, *, timeout_ms: int = REST_TIMEOUT_MS
) -> tuple[http.server.ThreadingHTTPServer, int]:
    """Serve `model`'s REST API on host:port (0: any free port) in a background thread, Predict calls
    sharing `slots` with gRPC; returns the server and its port. Stop it with server.shutdown()
    and server.server_close()."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        server = _RestServer((host, port), RestApi(model, slots, timeout_ms), family)
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
