"""Style transfer through TensorFlow Serving's REST API, for networks where gRPC is blocked.

Each run is one `serving_default` call in the columnar JSON form, images as {"b64": ...};
outputs whose names end in `_bytes` come back the same way. There is no chunked progress:
pixels as JSON numbers would cost several times their binary size.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import PIL.Image
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from . import contract
from .contract import Result
from .errors import ServerError, with_retries
from .images import ImageLike, encode

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
    each call in seconds; the server has its own limit, --rest_api_timeout_in_ms.
    """

    def __init__(
        self,
        base_url: str = "http://localhost:8501",
        *,
        model_name: str = "nst",
        version: int | None = None,
        timeout: float | None = 600.0,
        retries: int = 3,
    ):
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self.retries = retries
        self._signature: meta_graph_pb2.SignatureDef | None = None  # fetched once: it types the options

    def stylize(self, content: ImageLike, style: ImageLike | Sequence[ImageLike], **options: object) -> PIL.Image.Image:
        """`content` painted in `style`, as a PIL image; see `run`."""
        return self.run(content, style, **options).image

    def run(self, content: ImageLike, style: ImageLike | Sequence[ImageLike], **options: object) -> Result:
        """One serving_default call; options as for NSTClient.run, typed from the served signature."""
        if self._signature is None:
            self._signature = self.signatures()[1][contract.SERVING_DEFAULT]
        values = contract.typed_options(options, self._signature)
        styles = [_b64(encode(s, "style")) for s in contract.as_list(style)]
        inputs: dict[str, Any] = {
            "content": _b64(encode(content, "content")),
            "style": styles[0] if len(styles) == 1 else styles,
            **{k: _json_value(v) for k, v in values.items()},
        }
        body = {"signature_name": contract.SERVING_DEFAULT, "inputs": inputs}
        outputs = self._request(":predict", body)["outputs"]
        return Result(
            png=base64.b64decode(outputs["image_bytes"]["b64"]),
            losses={k: float(outputs[k]) for k in contract.LOSSES},
            model_version=self.version,
        )

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
        return with_retries(lambda: self._send(request), self.retries)

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


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def _json_value(value: np.ndarray) -> object:
    """An option as JSON: numbers, booleans, text (string inputs), or lists of them."""
    plain = value.tolist()
    if value.dtype.kind == "O":
        return [v.decode() for v in plain] if isinstance(plain, list) else plain.decode()
    return plain


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's {"error": ...} message, or the HTTP reason if the body is not that."""
    try:
        return json.loads(error.read())["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {error.code} {error.reason}"
