"""nst-devserver's REST API answers like tensorflow_model_server's: paths, JSON shapes, status codes, messages.

The server runs in-process on a loopback port over the session's Session (as versions 1 and 3);
what the stock server would say is quoted from tensorflow_serving 2.20.0 (http_rest_api_handler.cc,
http_rest_api_util.cc, http_server.cc, util/json_tensor.cc).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.client
import json
import pathlib
import re
import resource
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import serving_default, wait_for
from serving_fixtures import running_devserver
from tensorflow_serving.apis import get_model_status_pb2, model_pb2, model_service_pb2_grpc

from nst_client import RestClient, tensors
from nst_devserver import rest
from nst_devserver import server as ds

SMALL = {"steps": 2, "max_dim": 32}
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


class _Held:
    """A call that holds a run slot for as long as the test needs (what RunSlots asks of a call)."""

    def time_remaining(self):
        return None

    def is_active(self):
        return True

    def add_callback(self, callback):
        return True


@pytest.fixture(scope="module")
def model(serving):
    return ds.Model("nst", {1: serving, 3: serving})


@pytest.fixture(scope="module")
def slots():
    return ds.RunSlots(running=1, waiting=0)


@pytest.fixture(scope="module")
def port(model, slots):
    with rest.rest_server(model, "127.0.0.1", 0, slots) as bound:
        yield bound


def call(port: int, method: str, path: str, body: object = None) -> tuple[int, str, object]:
    """(HTTP status, Content-Type, body parsed as JSON when it is JSON)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    text = response.read().decode()
    content_type = response.getheader("Content-Type")
    connection.close()
    return response.status, content_type, json.loads(text) if content_type == "application/json" and text else text


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def every_input(serving, content_png: bytes, style_png: bytes, **values: object) -> dict:
    """serving_default's inputs as JSON, each at its signature default unless given: the REST API
    wants them all."""
    signature = serving.signature("serving_default")
    inputs = {}
    for name, default in signature.defaults.items():
        value = tf.make_ndarray(default).tolist()
        inputs[name] = value.decode() if isinstance(value, bytes) else value
    return {**inputs, "content": b64(content_png), "style": b64(style_png), **values}


# ---- status and metadata ----------------------------------------------------------------------------


def test_status_of_every_version_and_of_one(port):
    ok = {"error_code": "OK", "error_message": ""}
    assert call(port, "GET", "/v1/models/nst") == (
        200,
        "application/json",
        {
            "model_version_status": [
                {"version": "3", "state": "AVAILABLE", "status": ok},
                {"version": "1", "state": "AVAILABLE", "status": ok},
            ]
        },
    )
    assert call(port, "GET", "/v1/models/nst/versions/1")[2] == {
        "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]
    }
    assert call(port, "GET", "/v1/models/nst/versions/2")[::2] == (
        404,
        {"error": "Could not find version 2 of model nst"},
    )
    assert call(port, "GET", "/v1/models/other")[::2] == (404, {"error": "Could not find any versions of model other"})
    assert call(port, "GET", "/v1/models")[::2] == (400, {"error": "Missing model name in request."})


def test_metadata_is_the_signature_defs_of_the_version_asked_for(port, serving):
    code, _, body = call(port, "GET", "/v1/models/nst/metadata")
    assert code == 200
    assert body["model_spec"] == {"name": "nst", "signature_name": "", "version": "3"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert set(serving.signatures) <= set(signatures)
    assert set(signatures["serving_default"]["inputs"]) == set(serving.signature("serving_default").inputs)
    assert call(port, "GET", "/v1/models/nst/versions/1/metadata")[2]["model_spec"]["version"] == "1"
    assert call(port, "GET", "/v1/models/nst/labels/stable/metadata")[::2] == (
        400,
        {"error": "Unrecognized servable version label: stable"},
    )


def test_rest_client_reads_status_and_signatures(port):
    client = RestClient(f"http://127.0.0.1:{port}", version=1, retries=0)
    assert [(s.version, s.state) for s in client.status()] == [(1, AVAILABLE)]
    version, signatures = client.signatures()
    assert version == 1 and {"serving_default", "pixels", "decode"} <= set(signatures)


# ---- predict --------------------------------------------------------------------------------------


def test_predict_returns_the_png_and_losses_of_the_session(port, serving, content_png, style_png):
    body = {"signature_name": "serving_default", "inputs": every_input(serving, content_png, style_png, **SMALL)}
    code, content_type, answer = call(port, "POST", "/v1/models/nst/versions/1:predict", body)
    assert (code, content_type) == (200, "application/json"), answer
    outputs = answer["outputs"]
    assert base64.b64decode(outputs["image_bytes"]["b64"]) == serving_default(serving, content_png, style_png, **SMALL)
    feeds = {k: tf.make_ndarray(v) for k, v in serving.signature("serving_default").defaults.items()}
    feeds.update(
        content=np.array(content_png, object),
        style=np.array(style_png, object),
        **{k: np.int32(v) for k, v in SMALL.items()},
    )
    losses = serving.run("serving_default", feeds, ["loss", "style_loss"])
    for name, value in losses.items():  # written so that they read back to the same float32
        assert np.float32(outputs[name]) == value


def test_rest_client_gets_the_png_of_the_session_when_it_sends_every_input(port, serving, content_png, style_png):
    options = {
        k: v
        for k, v in every_input(serving, content_png, style_png, **SMALL).items()
        if k not in ("content", "style", "mask")  # the images, which `run` takes apart; no mask: the default
    }
    result = RestClient(f"http://127.0.0.1:{port}", retries=0).run(content_png, style_png, **options)
    assert result.png == serving_default(serving, content_png, style_png, **SMALL)


def test_rest_client_with_defaults_left_out(port, serving, content_png, style_png):
    """The stock REST API fills in no defaults (json_tensor.cc: 'Missing named input'): the client
    sends each input it was not given with the signature's default."""
    result = RestClient(f"http://127.0.0.1:{port}", retries=0).run(content_png, style_png, **SMALL)
    assert result.png == serving_default(serving, content_png, style_png, **SMALL)


def test_columnar_inputs_must_name_every_input_and_extra_names_are_ignored(port, serving, content_png, style_png):
    inputs = every_input(serving, content_png, style_png, **SMALL)
    missing = {k: v for k, v in inputs.items() if k != "tv_weight"}
    assert call(port, "POST", "/v1/models/nst:predict", {"inputs": missing})[::2] == (
        400,
        {"error": "Missing named input: tv_weight in 'inputs' object."},
    )
    code, _, answer = call(port, "POST", "/v1/models/nst:predict", {"inputs": {**inputs, "no_such_input": 1}})
    assert code == 200 and "image_bytes" in answer["outputs"]


def test_json_is_typed_by_the_signature(port, serving, content_png, style_png):
    def error(**values):
        code, _, answer = call(
            port, "POST", "/v1/models/nst:predict", {"inputs": every_input(serving, content_png, style_png, **values)}
        )
        assert code == 400, answer
        return answer["error"]

    assert error(steps=2.5, max_dim=32) == "JSON Value: 2.5 Type: Number is not of expected type: int32"
    assert error(steps=True, max_dim=32) == "JSON Value: true Type: True is not of expected type: int32"
    assert error(steps=2**31, max_dim=32) == f"JSON Value: {2**31} Type: Number is not of expected type: int32"
    assert error(style_weight="high", **SMALL) == 'JSON Value: "high" Type: String is not of expected type: float'
    assert error(content={"b64": "not base64!"}, **SMALL) == "Unable to base64 decode"
    assert error(content={"b64": "AA==", "x": 1}, **SMALL).endswith("not formatted correctly for base64 data")
    # The shape is read along first elements ([2, 1]); the stray 2 sits at level 2 of a rank-2 tensor.
    message = error(steps=[[1], 2], max_dim=32)
    assert message == "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"
    # Typed right but out of the model's range: the graph's own check, INVALID_ARGUMENT as over gRPC.
    assert "steps must be between 0 and 10000" in error(steps=-1, max_dim=32)


def test_signature_model_and_version_errors(port, serving, content_png, style_png):
    inputs = {"inputs": every_input(serving, content_png, style_png, **SMALL)}
    assert call(port, "POST", "/v1/models/nst:predict", {**inputs, "signature_name": "nope"})[::2] == (
        400,
        {"error": 'Serving signature name: "nope" not found in signature def'},
    )
    assert call(port, "POST", "/v1/models/other:predict", inputs)[::2] == (
        404,
        {"error": "Servable not found for request: Latest(other)"},
    )
    assert call(port, "POST", "/v1/models/nst/versions/2:predict", inputs)[::2] == (
        404,
        {"error": "Servable not found for request: Specific(nst, 2)"},
    )
    assert call(port, "POST", "/v1/models/nst/labels/canary:predict", inputs)[::2] == (
        400,
        {"error": "Unrecognized servable version label: canary"},
    )


def test_request_document_errors(port):
    assert call(port, "POST", "/v1/models/nst:predict", b"")[::2] == (
        400,
        {"error": "JSON Parse error: The document is empty"},
    )
    code, _, answer = call(port, "POST", "/v1/models/nst:predict", b'{"inputs": ')
    assert code == 400 and answer["error"].startswith("JSON Parse error: ")
    assert call(port, "POST", "/v1/models/nst:predict", [1, 2])[::2] == (
        400,
        {"error": "JSON Value: [1, 2] Is not object"},
    )
    assert call(port, "POST", "/v1/models/nst:predict", {"signature_name": "decode"})[::2] == (
        400,
        {"error": "Missing 'inputs' or 'instances' key"},
    )
    code, _, answer = call(port, "POST", "/v1/models/nst:predict", {"inputs": {}, "instances": [1]})
    assert code == 400 and answer["error"].endswith("expecting only one of 'inputs' or 'instances' keys to exist ")
    code, _, answer = call(port, "POST", "/v1/models/nst:predict", {"signature_name": 7, "inputs": {}})
    assert code == 400 and answer["error"].endswith("'signature_name' key must be a string value.")


def test_rows_batch_every_input_which_this_model_refuses(port, serving, content_png, style_png):
    row = every_input(serving, content_png, style_png, **SMALL)
    code, _, answer = call(port, "POST", "/v1/models/nst:predict", {"instances": [row]})
    assert code == 400 and "[1]" in answer["error"], answer  # the graph's check: content is a [1] vector, not a scalar
    assert call(port, "POST", "/v1/models/nst:predict", {"instances": [1, 2]})[::2] == (
        400,
        {
            "error": "instances is a plain list, but expecting list of objects as multiple input tensors required "
            "as per tensorinfo_map"
        },
    )
    code, _, answer = call(port, "POST", "/v1/models/nst:predict", {"instances": [{**row, "extra": 1}]})
    assert (code, answer["error"]) == (
        400,
        "Failed to process element: 0 key: extra of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON object: does not have named input: extra",
    )


def test_paths_and_methods_outside_the_api(port):
    assert call(port, "GET", "/v1/nothing/here")[::2] == (400, {"error": "Malformed request: GET /v1/nothing/here"})
    assert call(port, "POST", "/v1/models/nst:PREDICT", {})[::2] == (
        400,
        {"error": "Malformed request: POST /v1/models/nst:PREDICT"},
    )
    assert call(port, "DELETE", "/v1/models/nst")[::2] == (400, {"error": "Malformed request: DELETE /v1/models/nst"})
    assert call(port, "OPTIONS", "/v1/models/nst")[::2] == (
        400,
        {"error": "Origin header is missing in CORS preflight"},
    )
    code, content_type, _ = call(port, "GET", "/healthz")
    assert (code, content_type) == (404, "text/html")  # outside /v1 the handler never sees it
    assert call(port, "POST", "/v1/models/nst:classify", {})[0] == 501


# ---- run slots and time --------------------------------------------------------------------------


def test_predict_takes_a_run_slot_shared_with_grpc(port, slots, serving, content_png, style_png):
    """A slot held elsewhere (as by a gRPC call) refuses a REST Predict at once: 429, RESOURCE_EXHAUSTED;
    status calls never wait; once the slot is free the call runs."""
    body = {"signature_name": "decode", "inputs": {"image": b64(content_png), "max_dim": 32}}
    with slots.hold(_Held()):
        code, _, answer = call(port, "POST", "/v1/models/nst:predict", body)
        assert code == 429, answer
        assert answer["error"].endswith("already; retry later")
        assert call(port, "GET", "/v1/models/nst")[0] == 200
    code, _, answer = call(port, "POST", "/v1/models/nst:predict", body)
    assert code == 200
    pixels = np.array(answer["outputs"], np.float32)  # one output: unnamed
    assert pixels.shape[0] == 1 and pixels.shape[-1] == 3


def test_the_rest_timeout_bounds_the_queue_and_the_run(model, serving, content_png, style_png):
    slots = ds.RunSlots(running=1, waiting=1)
    body = {"inputs": every_input(serving, content_png, style_png, steps=10_000, max_dim=32)}
    with rest.rest_server(model, "127.0.0.1", 0, slots, timeout_ms=200) as port:
        code, _, answer = call(port, "POST", "/v1/models/nst:predict", body)
        assert (code, answer) == (504, {"error": answer["error"]})  # the Session run stopped at the timeout
        with slots.hold(_Held()):
            result = {}
            queued = threading.Thread(
                target=lambda: result.update(answer=call(port, "POST", "/v1/models/nst:predict", body))
            )
            queued.start()
            wait_for(lambda: slots.waiting == 1)
            queued.join(30)
        assert result["answer"][::2] == (504, {"error": "deadline exceeded while queued for a run"})
    assert (slots.running, slots.waiting) == (0, 0)


def test_outputs_as_json_numbers():
    """Floats as the server writes them: shortest of six digits or full precision, whole numbers with .0."""
    proto = tensors.to_proto(np.array([[0.1, 3.0, 1e6, 1234567.0, np.nan, -np.inf]], np.float32))
    assert rest._outputs_json({"x": proto}, rows=False) == '{"outputs": [[0.1, 3.0, 1e+06, 1234567.0, NaN, -Infinity]]}'
    assert rest._outputs_json({"x": proto, "n": tensors.to_proto(np.array([7], np.int32))}, rows=True) == (
        '{"predictions": [{"n": 7, "x": [0.1, 3.0, 1e+06, 1234567.0, NaN, -Infinity]}]}'
    )
    scalar = tensors.to_proto(np.float32(2.5))
    with pytest.raises(ds.ServingError, match="Tensor name: x has no shape information"):
        rest._outputs_json({"x": scalar}, rows=True)


def test_http_status_of_every_code_is_the_servers():
    assert set(rest.HTTP_STATUS) == set(grpc.StatusCode)
    assert rest.HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429
    assert rest.HTTP_STATUS[grpc.StatusCode.FAILED_PRECONDITION] == 400


# ---- hostile clients -----------------------------------------------------------------------------


def connection(port: int, data: bytes = b"") -> socket.socket:
    """A raw client connection that has sent `data`; every read on it fails after 10 s."""
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(data)
    return client


def until_closed(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a test fails if it never does)."""
    received = b""
    with client:
        while piece := client.recv(2**16):
            received += piece
    return received


def refusal(port: int, request: bytes) -> tuple[int, dict]:
    """(status, JSON error) of a request the server must answer and then close the connection on."""
    received = until_closed(connection(port, request))
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Connection: close" in head, received[:300]
    return int(head.split()[1]), json.loads(body)


def post(path: str, headers: str = "", body: bytes = b"") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode() + body


def predict_status(port: int, body: bytes) -> tuple[int, str]:
    code, _, answer = call(port, "POST", "/v1/models/nst:predict", body)
    return code, answer["error"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(port):
    """413 from the headers alone: a Content-Length of 10^12, one over the limit behind `Expect: 100-continue`
    (no "100 Continue" is sent first), and a chunk declaring more than the limit."""
    start = time.monotonic()
    code, answer = refusal(port, post("/v1/models/nst:predict", "Content-Length: 1000000000000\r\n"))
    assert code == 413 and f"limit of {rest.MAX_BODY_BYTES} bytes" in answer["error"]
    expect = f"Content-Length: {rest.MAX_BODY_BYTES + 1}\r\nExpect: 100-continue\r\n"
    received = until_closed(connection(port, post("/v1/models/nst:predict", expect)))
    assert received.startswith(b"HTTP/1.1 413 ")
    chunked = post(
        "/v1/models/nst:predict", "Transfer-Encoding: chunked\r\n", f"{rest.MAX_BODY_BYTES + 1:x}\r\n".encode()
    )
    assert refusal(port, chunked)[0] == 413
    assert time.monotonic() - start < 10  # nothing waited for a body
    assert call(port, "GET", "/v1/models/nst")[0] == 200


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ("Content-Length: -5\r\n", b""),
        ("Content-Length: abc\r\n", b""),
        ("Content-Length: 1e3\r\n", b""),
        ("Transfer-Encoding: chunked\r\n", b"zz\r\n"),
        ("Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("Transfer-Encoding: chunked\r\n", b"0x2\r\n{}\r\n0\r\n\r\n"),
        ("Transfer-Encoding: chunked\r\n", b"2\r\n{}xx\r\n0\r\n\r\n"),
    ],
)
def test_broken_framing_is_a_400_and_the_connection_closes(port, headers, body):
    code, answer = refusal(port, post("/v1/models/nst:predict", headers, body))
    assert code == 400, answer
    assert call(port, "GET", "/v1/models/nst")[0] == 200


def test_a_chunked_body_is_read(port):
    """Chunked framing that is right still works (the body is split mid-document)."""
    body = b'{"inputs": {}, "signature_name": "nope"}'
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:7], body[7:])) + b"0\r\n\r\n"
    client = connection(port, post("/v1/models/nst:predict", "Transfer-Encoding: chunked\r\n", chunks))
    with client:
        response = http.client.HTTPResponse(client)
        response.begin()
        assert (response.status, json.loads(response.read())) == (
            400,
            {"error": 'Serving signature name: "nope" not found in signature def'},
        )


def test_idle_and_slow_clients_are_timed_out(model, slots):
    """A silent connection is closed after the idle timeout; a request whose headers or body stop
    coming is dropped (headers) or answered 408 (body) after the request timeout, `Expect:
    100-continue` with no body included."""
    with rest.rest_server(model, "127.0.0.1", 0, slots, idle_timeout_s=0.3, request_timeout_s=0.6) as port:
        start = time.monotonic()
        assert until_closed(connection(port)) == b""
        assert until_closed(connection(port, b"GET /v1/models/nst HTTP/1.1\r\nHost: te")) == b""
        code, answer = refusal(port, post("/v1/models/nst:predict", "Content-Length: 100\r\n", b'{"inputs"'))
        assert code == 408 and "did not arrive within 0.6 s" in answer["error"]
        received = until_closed(
            connection(port, post("/v1/models/nst:predict", "Content-Length: 100\r\nExpect: 100-continue\r\n"))
        )
        assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 408 ")
        assert time.monotonic() - start < 8
        assert call(port, "GET", "/v1/models/nst")[0] == 200


def test_idle_connections_never_starve_status_calls(port, slots):
    """Three times as many silent connections as the port has threads: the longest idle ones are
    closed to make room, so a status call still answers at once, and no more threads are started."""
    limit = slots.max_running + slots.max_waiting + rest.SPARE_CONNECTIONS
    threads = threading.active_count()
    clients = [connection(port) for _ in range(3 * limit)]
    try:
        code, _, _ = call(port, "GET", "/v1/models/nst")
        assert code == 200
        assert threading.active_count() <= threads + limit
        assert until_closed(clients[0]) == b""  # the oldest were closed
    finally:
        for client in clients:
            client.close()


def test_with_every_connection_busy_a_new_one_gets_503_at_once(model):
    """Connections in the middle of a request are not closed for others: beyond them, 503."""
    server, port = rest.serve_rest(model, "127.0.0.1", 0, ds.RunSlots(running=1, waiting=0))
    limit = 1 + rest.SPARE_CONNECTIONS
    clients = [connection(port, b"GET /v1/models/nst HTTP/1.1\r\n") for _ in range(limit)]
    try:
        wait_for(lambda: server._free._value == 0 and not server._idle)  # every thread has its request started
        start = time.monotonic()
        code, answer = refusal(port, b"GET /v1/models/nst HTTP/1.1\r\n\r\n")
        assert code == 503 and f"all {limit} REST connections are busy" in answer["error"]
        assert time.monotonic() - start < 5
    finally:
        for client in clients:
            client.close()
        server.shutdown()
        server.server_close()


def test_json_the_dev_server_refuses_with_400(port):
    """Deep nesting, numbers no double holds and documents of too many values are 400s, not 500s."""
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert predict_status(port, deep) == (
        400,
        f"JSON Parse error: arrays and objects nested deeper than {rest.MAX_JSON_DEPTH} levels",
    )
    nested = b'{"inputs": ' + b"[" * rest.MAX_JSON_DEPTH + b"]" * rest.MAX_JSON_DEPTH + b"}"  # one level too many
    assert predict_status(port, nested) == predict_status(port, deep)
    too_big = (400, "JSON Parse error: Number too big to be stored in double.")
    assert predict_status(port, b'{"inputs": {"steps": 1' + b"0" * 5000 + b"}}") == too_big
    assert predict_status(port, b'{"inputs": {"style_weight": 1' + b"0" * 400 + b"}}") == too_big
    assert predict_status(port, b'{"inputs": {"style_weight": 1e400}}') == too_big
    many = b'{"inputs": [' + b"0," * rest.MAX_JSON_VALUES + b"0]}"
    code, message = predict_status(port, many)
    assert code == 400 and f"more than {rest.MAX_JSON_VALUES} values" in message


def test_numbers_are_read_as_rapidjson_reads_them():
    """Integers while they fit 64 bits, doubles beyond (so an int32 input refuses them by type)."""
    assert rest._parse_json(b'{"a": [-9223372036854775808, 18446744073709551615, 18446744073709551616, 1.5]}') == {
        "a": [-(2**63), 2**64 - 1, float(2**64), 1.5]
    }
    assert isinstance(rest._parse_json(b'{"a": 18446744073709551616}')["a"], float)


def test_a_repeated_key_keeps_its_first_value(port):
    """rapidjson's FindMember finds the first of repeated keys; so does the dev server."""
    body = b'{"signature_name": "nope", "signature_name": "serving_default", "inputs": {}}'
    assert predict_status(port, body) == (400, 'Serving signature name: "nope" not found in signature def')


def test_a_queued_call_sees_its_client_leave_whatever_its_descriptor_number():
    """select() fails on descriptors over 1023; the connection check must not."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1100:
        pytest.skip("needs at least 1100 file descriptors")
    server_end, client_end = socket.socketpair()
    high = socket.socket(fileno=fcntl.fcntl(server_end.fileno(), fcntl.F_DUPFD, 1050))
    server_end.close()
    with high:
        call = rest._RestCall(high, timeout_ms=0)
        assert call.is_active()
        client_end.close()
        assert not call.is_active()


# ---- the whole server under a flood ---------------------------------------------------------------


def grpc_answers(address: str) -> bool:
    """Whether the gRPC port answers its health check and GetModelStatus within seconds."""
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="nst")), timeout=10
        )
    return health.status == health_pb2.HealthCheckResponse.SERVING and len(status.model_version_status) == 1


def proc_status(pid: int, field: str) -> int:
    """A number from /proc/PID/status (Threads; VmHWM in kB)."""
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(rf"^{field}:\s*(\d+)", status.read(), re.MULTILINE)[1])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_flood_of_rest_connections_and_bodies_leaves_grpc_and_status_answering(exported, tmp_path):
    """nst-devserver in its own process: 600 idle REST connections (once enough to take every thread
    and kill the gRPC loop) start no more threads than the bound, a status call and gRPC still answer,
    a Content-Length of 10^12 is a 413, and a body at the limit made of empty objects (50 times its
    size once parsed) is a 400 that leaves the peak memory within a few times the body."""
    (tmp_path / "nst").mkdir()
    (tmp_path / "nst" / "1").symlink_to(exported, target_is_directory=True)  # one version: a quicker start
    flags = ("--rest-port", "0", "--max-concurrent", "1", "--max-queue", "2")
    with running_devserver(tmp_path / "nst", tmp_path / "stderr.log", *flags) as server:
        pid, address = server["process"].pid, server["address"]
        rest_port = int(re.search(r"REST \(plaintext\) on port (\d+)", server["banner"])[1])
        threads = proc_status(pid, "Threads")
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(connection(rest_port)) for _ in range(600)]
            code, _, _ = call(rest_port, "GET", "/v1/models/nst")
            assert code == 200
            assert grpc_answers(address)
            assert proc_status(pid, "Threads") <= threads + 1 + 2 + rest.SPARE_CONNECTIONS
            assert len(clients) == 600
        assert grpc_answers(address)
        code, answer = refusal(rest_port, post("/v1/models/nst:predict", "Content-Length: 1000000000000\r\n"))
        assert code == 413, answer
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")  # the peak (VmHWM) starts again from the memory in use now
        in_use = proc_status(pid, "VmRSS")
        empties = b'{"inputs": [' + b"{}," * ((rest.MAX_BODY_BYTES - 20) // 3) + b"{}]}"
        assert len(empties) <= rest.MAX_BODY_BYTES
        code, _, answer = call(rest_port, "POST", "/v1/models/nst:predict", empties)
        assert code == 400 and "values" in answer["error"]
        assert (proc_status(pid, "VmHWM") - in_use) * 1024 < 4 * rest.MAX_BODY_BYTES
        assert grpc_answers(address)
        assert server["process"].poll() is None


def test_the_docs_give_the_rest_limits():
    """docs/serving.md's table of REST limits states each as devserver/rest.py defines it."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    section = text.split("## REST limits of the development server\n")[1].split("\n## ")[0]
    for shown in (
        f"{rest.MAX_BODY_BYTES // 2**20} MiB (`MAX_BODY_BYTES`)",
        f"{rest.MAX_JSON_VALUES} (`MAX_JSON_VALUES`)",
        f"{rest.MAX_JSON_DEPTH} levels (`MAX_JSON_DEPTH`)",
        f"{rest.IDLE_TIMEOUT_S:g} s (`IDLE_TIMEOUT_S`)",
        f"{rest.REQUEST_TIMEOUT_S:g} s (`REQUEST_TIMEOUT_S`)",
        f"{rest.SPARE_CONNECTIONS} (`SPARE_CONNECTIONS`)",
    ):
        assert shown in section
