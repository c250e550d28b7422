"""Style transfer through TensorFlow Serving's REST API, for networks where gRPC is blocked.

Each run is one `serving_default` call in the columnar JSON form, images as {"b64": ...};
outputs whose names end in `_bytes` come back the same way. There is no chunked progress:
pixels as JSON numbers would cost several times their binary size.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import PIL.Image
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from . import chunked, contract, tensors
from .contract import Result
from .errors import ServerError, with_retries
from .images import ImageLike, encode
from .settings import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, DEFAULT_WAIT_S

# The server's mapping of status codes to HTTP (model_servers/http_server.cc), reversed.
# 400 also stands for FAILED_PRECONDITION and OUT_OF_RANGE; 500 for INTERNAL and DATA_LOSS.
_HTTP_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class RestClient:
    """The REST counterpart of NSTClient (same options and results, one call per run).

    `base_url` is the server's REST address, e.g. "http://localhost:8501". `timeout` bounds
    each call in seconds, all of it: connecting, sending, the answer's headers and body (a server
    that trickles its answer is cut off then); the server has its own limit, --rest_api_timeout_in_ms. A call refused as
    busy (429) waits up to `wait` seconds for room, as NSTClient's do; one whose server is gone is
    retried `retries` times.
    """

    def __init__(
        self,
        base_url: str = "http://localhost:8501",
        *,
        model_name: str = "nst",
        version: int | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        wait: float = DEFAULT_WAIT_S,
    ):
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self.retries = retries
        self.wait = wait
        self._signature: meta_graph_pb2.SignatureDef | None = None  # fetched once: it types the options

    def stylize(self, content: ImageLike, style: ImageLike | Sequence[ImageLike], **options: object) -> PIL.Image.Image:
        """`content` painted in `style`, as a PIL image; see `run`."""
        return self.run(content, style, **options).image

    def run(
        self,
        content: ImageLike,
        style: ImageLike | Sequence[ImageLike],
        mask: ImageLike | None = None,
        **options: object,
    ) -> Result:
        """One serving_default call; `mask` and options as for NSTClient.run, typed from the served signature."""
        if self._signature is None:
            self._signature = self.signatures()[1][contract.SERVING_DEFAULT]
        values = contract.typed_options(options, self._signature)
        # Over REST the stock server fills in no defaults: every input is sent, defaults from the signature.
        defaults = {k: tensors.to_array(v) for k, v in self._signature.defaults.items()}
        styles = [encode(s, "style") for s in contract.as_list(style)]
        mask_bytes = None if mask is None else encode(mask, "mask")
        content_bytes, options = encode(content, "content"), {**defaults, **values}
        result = chunked.run(self._call, content_bytes, styles, options, defaults, chunk=0, mask=mask_bytes)
        return dataclasses.replace(result, model_version=self.version)

    def _call(self, signature: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, Any]:
        """One Predict call in the columnar JSON form (the REST API has no output filter)."""
        body = {"signature_name": signature, "inputs": {k: _json_value(v) for k, v in inputs.items()}}
        answer = self._request(":predict", body)
        with self._reading():
            return {k: _from_json(v) for k, v in answer["outputs"].items()}

    def status(self) -> list[get_model_status_pb2.ModelVersionStatus]:
        """The state of each version of the model (GET /v1/models/<name>)."""
        answer = self._request("")
        with self._reading():
            response = json_format.ParseDict(
                answer, get_model_status_pb2.GetModelStatusResponse(), ignore_unknown_fields=True
            )
        return list(response.model_version_status)

    def signatures(self) -> tuple[int, dict[str, meta_graph_pb2.SignatureDef]]:
        """(version, SignatureDefs by name) of the version the server would run."""
        body = self._request("/metadata")
        with self._reading():
            signature_map = json_format.ParseDict(
                body["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap(), ignore_unknown_fields=True
            )
            named = {k: v for k, v in signature_map.signature_def.items() if not k.startswith("__")}
            return int(body["model_spec"]["version"]), named

    def _request(self, suffix: str, body: dict | None = None) -> dict:
        url = f"{self.base_url}/v1/models/{self.model_name}"
        if self.version is not None:
            url += f"/versions/{self.version}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url + suffix, data=data, headers={"Content-Type": "application/json"})
        return with_retries(lambda: self._send(request), self.retries, self.wait)

    def _send(self, request: urllib.request.Request) -> dict:
        """One HTTP exchange, all of it (connect, send, headers, body) within `timeout`: a socket's timeout
        bounds each read alone, so a server that trickles its answer would hold the call as long as it
        trickles; a timer cuts the connection at the deadline instead."""
        watch = _Watch()
        opener = urllib.request.build_opener(_WatchedHttp(watch), _WatchedHttps(watch))
        timer = threading.Timer(self.timeout, watch.cut) if self.timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            with opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            message = _error_message(e)
            if watch.expired:
                raise self._late() from None
            raise ServerError(_HTTP_CODES.get(e.code, grpc.StatusCode.UNKNOWN), message) from None
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if watch.expired or isinstance(reason, TimeoutError):
                raise self._late() from None
            raise ServerError(
                grpc.StatusCode.UNAVAILABLE, f"cannot reach a model server at {self.base_url}: {reason}"
            ) from None
        finally:
            if timer is not None:
                timer.cancel()
        try:
            answer = json.loads(raw)
        except ValueError:  # not JSON, not UTF-8, or cut short (by the deadline: a cut reads as the end)
            raise (self._late() if watch.expired else self._not_an_answer(raw)) from None
        if not isinstance(answer, dict):
            raise self._not_an_answer(raw)
        return answer

    def _late(self) -> ServerError:
        return ServerError(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"no whole answer from {self.base_url} within {self.timeout:g} s"
        )

    def _not_an_answer(self, raw: bytes) -> ServerError:
        shown = raw[:40].decode("utf-8", "replace").replace("\n", " ")
        return ServerError(
            grpc.StatusCode.UNKNOWN,
            f"{self.base_url} answered with {len(raw)} bytes that are not a TensorFlow Serving JSON object "
            f"({shown!r}{'...' if len(raw) > 40 else ''}): is it a model server's REST port?",
        )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A JSON object without the fields the REST API returns is a one-line error, as is a non-JSON answer."""
        try:
            yield
        except (KeyError, TypeError, ValueError, AttributeError, json_format.ParseError) as e:
            raise ServerError(
                grpc.StatusCode.UNKNOWN,
                f"{self.base_url} answered with JSON that is not TensorFlow Serving's ({type(e).__name__}: {e}): "
                "is it a model server's REST port?",
            ) from None


class _Watch:
    """The connections of one call, so that a timer can cut them at the call's deadline: shutting a socket
    down wakes a read blocked on it."""

    def __init__(self) -> None:
        self.expired = False
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def add(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connections.append(connection)

    def cut(self) -> None:
        with self._lock:
            self.expired = True
            sockets = [c.sock for c in self._connections if c.sock is not None]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """A urllib handler whose connections `watch` can cut (proxies, redirects and HTTPS as urllib's own)."""

    def __init__(self, watch: _Watch, *args: Any):
        super().__init__(*args)
        self.watch = watch

    def do_open(self, http_class: type, request: urllib.request.Request, **kwargs: Any) -> http.client.HTTPResponse:
        def connection(*args: Any, **options: Any) -> http.client.HTTPConnection:
            made = http_class(*args, **options)
            self.watch.add(made)
            return made

        return super().do_open(connection, request, **kwargs)


class _WatchedHttp(_Watched, urllib.request.HTTPHandler):
    pass


class _WatchedHttps(_Watched, urllib.request.HTTPSHandler):
    pass


def _json_value(value: np.ndarray) -> object:
    """An input as JSON: numbers, booleans, lists of them; strings as {"b64": ...} (images are
    binary, and the server decodes b64 for any string input)."""
    plain = np.asarray(value).tolist()
    if np.asarray(value).dtype.kind == "O":
        return [_b64(v) for v in plain] if isinstance(plain, list) else _b64(plain)
    return plain


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def _from_json(value: object) -> object:
    """An output from JSON: `_bytes` outputs come as {"b64": ...}, numbers as they are."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    return np.asarray(value)


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's {"error": ...} message, or the HTTP reason if the body is not that."""
    try:
        return json.loads(error.read())["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {error.code} {error.reason}"
