"""Style transfer through TensorFlow Serving's REST API, for networks where gRPC is blocked.

Each run is one `serving_default` call in the columnar JSON form, images as {"b64": ...};
outputs whose names end in `_bytes` come back the same way. There is no chunked progress:
pixels as JSON numbers would cost several times their binary size.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
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
    each call in seconds; the server has its own limit, --rest_api_timeout_in_ms. A call refused as
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
        return {k: _from_json(v) for k, v in self._request(":predict", body)["outputs"].items()}

    def status(self) -> list[get_model_status_pb2.ModelVersionStatus]:
        """The state of each version of the model (GET /v1/models/<name>)."""
        response = json_format.ParseDict(
            self._request(""), get_model_status_pb2.GetModelStatusResponse(), ignore_unknown_fields=True
        )
        return list(response.model_version_status)

    def signatures(self) -> tuple[int, dict[str, meta_graph_pb2.SignatureDef]]:
        """(version, SignatureDefs by name) of the version the server would run."""
        body = self._request("/metadata")
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
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            raise ServerError(_HTTP_CODES.get(e.code, grpc.StatusCode.UNKNOWN), _error_message(e)) from None
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(reason, TimeoutError):
                raise ServerError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {self.timeout:g} s") from None
            raise ServerError(
                grpc.StatusCode.UNAVAILABLE, f"cannot reach a model server at {self.base_url}: {reason}"
            ) from None


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
