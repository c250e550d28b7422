"""Style transfer through TensorFlow Serving's gRPC API.

A run is either one `serving_default` call (encoded images in, PNG out) or, for progress,
`decode` for each image and then `pixels` in chunks that hand the optimiser state on; both
give the same PNG, because the state is the model's whole loop carry.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import PIL.Image
from google.protobuf import message
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from . import contract, tensors
from .contract import Result
from .errors import ClientError, InputError, ServerError, with_retries
from .images import ImageLike, encode

# The server accepts messages up to 2 GiB; gRPC's Python default receive limit is 4 MiB.
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1))
PROBE_TIMEOUT_S = 2.0  # how long the call that asks why a channel cannot connect may take
Progress = Callable[[int, int, float], None]  # (steps done, total steps, loss; NaN before the first chunk)


class NSTClient:
    """Style transfer on a TensorFlow Serving gRPC endpoint that serves the exported model.

    `timeout` is the deadline of each call in seconds (None: no deadline); the server stops
    the run when it passes. The first call waits up to `connect_timeout` seconds for the
    server; a call that then fails with UNAVAILABLE or RESOURCE_EXHAUSTED is retried `retries`
    times with backoff (runs are pure functions of their inputs, so a retry is safe).

    TLS: `tls=True` trusts the system's root certificates, `ca_file` (implies TLS) a PEM file of
    CA certificates instead; `client_cert` and `client_key` (PEM) add a client certificate for
    servers that require one. Or pass your own `channel`.

    The served signatures are fetched once, at the first run: they type the options sent.
    A client is safe to share between threads.
    """

    def __init__(
        self,
        server: str = "localhost:8500",
        *,
        model_name: str = "nst",
        version: int | None = None,
        timeout: float | None = 600.0,
        connect_timeout: float = 10.0,
        retries: int = 3,
        tls: bool = False,
        ca_file: str | os.PathLike | None = None,
        client_cert: str | os.PathLike | None = None,
        client_key: str | os.PathLike | None = None,
        channel: grpc.Channel | None = None,
    ):
        self.server = server
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.tls = tls or any(path is not None for path in (ca_file, client_cert, client_key))
        if channel is None:
            credentials = _credentials(ca_file, client_cert, client_key) if self.tls else None
            channel = _channel(server, credentials)
        self._channel = channel
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._ready = threading.Event()
        self._signature_cache: dict[str, meta_graph_pb2.SignatureDef] | None = None

    # ---- style transfer ----------------------------------------------------------------------

    def stylize(
        self,
        content: ImageLike,
        style: ImageLike | Sequence[ImageLike],
        *,
        chunk: int = contract.DEFAULT_CHUNK,
        progress: Progress | None = None,
        **options: object,
    ) -> PIL.Image.Image:
        """`content` painted in `style`, as a PIL image; see `run` for the arguments."""
        return self.run(content, style, chunk=chunk, progress=progress, **options).image

    def run(
        self,
        content: ImageLike,
        style: ImageLike | Sequence[ImageLike],
        *,
        chunk: int = contract.DEFAULT_CHUNK,
        progress: Progress | None = None,
        **options: object,
    ) -> Result:
        """Run the model on a content image and one or more style images (paths, encoded bytes,
        PIL images or arrays).

        Options are the model's own inputs (steps, max_dim, style_weight, ...: `nst-client
        signatures` lists them), typed from the served signature; left out or None, the model's
        default applies. `chunk` > 0 runs `chunk` steps per call and reports to `progress`
        before the first call and after each; 0 sends one call.
        """
        if chunk < 0:
            raise InputError(f"chunk must be >= 0; got {chunk}")
        signatures = self._served_signatures()
        values = contract.typed_options(options, signatures[contract.SERVING_DEFAULT])
        content_bytes = encode(content, "content")
        styles = [encode(s, "style") for s in contract.as_list(style)]
        steps = int(values["steps"]) if "steps" in values else None
        if chunk and steps is None:
            steps = self.default_steps()
        if chunk and steps > chunk:
            return self._run_chunked(content_bytes, styles, values, steps, chunk, progress)
        images = {"content": content_bytes, "style": styles[0] if len(styles) == 1 else np.array(styles, object)}
        feeds = {k: tensors.to_proto(v) for k, v in {**images, **values}.items()}
        result = _result(self._predict(contract.SERVING_DEFAULT, feeds))
        if chunk and progress:
            progress(steps, steps, result.losses["loss"])
        return result

    def _run_chunked(
        self,
        content: bytes,
        styles: list[bytes],
        values: dict[str, np.ndarray],
        steps: int,
        chunk: int,
        progress: Progress | None,
    ) -> Result:
        pixels = self._served_signatures()[contract.PIXELS]
        state_names = contract.state_names(pixels)
        decode_options = {k: tensors.to_proto(values.pop(k)) for k in contract.DECODE_OPTIONS if k in values}
        values.pop("steps", None)
        stray = sorted(set(values) - set(pixels.inputs))
        if stray:
            raise InputError(f"options {stray} are not inputs of the {contract.PIXELS!r} signature: use chunk=0")
        version = self.version

        def decode(image: bytes) -> tensor_pb2.TensorProto:
            nonlocal version
            response = self._predict(
                contract.DECODE, {"image": tensors.to_proto(image), **decode_options}, version=version
            )
            version = response.model_spec.version.value  # every call of the run uses this version
            return response.outputs["pixels"]

        feeds = {"content": decode(content), **_style_batch([decode(s) for s in styles])}
        feeds.update({k: tensors.to_proto(v) for k, v in values.items()})
        state: dict[str, tensor_pb2.TensorProto] = {}  # empty: the model starts a fresh run
        done = 0
        if progress:
            progress(0, steps, math.nan)
        while True:
            todo = min(chunk, steps - done)
            last = done + todo >= steps
            steps_proto = tensors.to_proto(np.array(todo, np.int32))
            # Each new set of outputs makes the server optimise the graph once more (seconds, once
            # per server process), so chunks fetch everything, as the warmup requests did; the last
            # call leaves out the state, which can be tens of MB.
            wanted = ["image_bytes", *contract.LOSSES] if last else ()
            response = self._predict(contract.PIXELS, {**feeds, **state, "steps": steps_proto}, wanted, version=version)
            done += todo
            if progress:
                progress(done, steps, float(tensors.to_array(response.outputs["loss"])))
            if last:
                return _result(response)
            state = {k: response.outputs[k] for k in state_names}

    def default_steps(self) -> int:
        """The model's default number of steps, from its serving_default signature."""
        signature = self._served_signatures()[contract.SERVING_DEFAULT]
        if "steps" not in signature.defaults:
            raise ClientError(f"model {self.model_name!r} declares no default steps; pass steps explicitly")
        return int(tensors.to_array(signature.defaults["steps"]))

    def _served_signatures(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        """The served signatures, fetched once per client: they type every option sent."""
        if self._signature_cache is None:
            _, signatures = self.signatures()
            missing = {contract.SERVING_DEFAULT, contract.PIXELS, contract.DECODE} - set(signatures)
            if missing:
                raise ClientError(
                    f"model {self.model_name!r} lacks the signatures {sorted(missing)}: is it an nst-export model?"
                )
            self._signature_cache = signatures
        return self._signature_cache

    # ---- the raw API ---------------------------------------------------------------------------

    def predict(
        self, signature: str, inputs: Mapping[str, np.ndarray | bytes], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """One Predict call: arrays in with their own dtypes (the server converts nothing), arrays out."""
        response = self._predict(signature, {k: tensors.to_proto(v) for k, v in inputs.items()}, output_filter)
        return {k: tensors.to_array(v) for k, v in response.outputs.items()}

    def status(self) -> list[get_model_status_pb2.ModelVersionStatus]:
        """The state of each version of the model the server knows (ModelService.GetModelStatus)."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._model_spec())
        return list(self._call(self._models.GetModelStatus, request).model_version_status)

    def signatures(self) -> tuple[int, dict[str, meta_graph_pb2.SignatureDef]]:
        """(version, SignatureDefs by name) of the version the server would run."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self._model_spec(), metadata_field=["signature_def"]
        )
        response = self._call(self._predictions.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        named = {k: v for k, v in signature_map.signature_def.items() if not k.startswith("__")}
        return response.model_spec.version.value, named

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> NSTClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- plumbing ------------------------------------------------------------------------------

    def _model_spec(self, signature: str = "", version: int | None = None) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model_name, signature_name=signature)
        version = self.version if version is None else version
        if version is not None:
            spec.version.value = version
        return spec

    def _predict(
        self,
        signature: str,
        inputs: Mapping[str, tensor_pb2.TensorProto],
        output_filter: Sequence[str] = (),
        version: int | None = None,
    ) -> predict_pb2.PredictResponse:
        request = predict_pb2.PredictRequest(
            model_spec=self._model_spec(signature, version), output_filter=list(output_filter)
        )
        for name, proto in inputs.items():
            request.inputs[name].CopyFrom(proto)
        return self._call(self._predictions.Predict, request)

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: message.Message) -> Any:
        """`method(request)` with the deadline; RETRYABLE codes are retried, other errors raise ServerError."""
        self._wait_until_ready()

        def invoke() -> Any:
            call = method.future(request, timeout=self.timeout)
            try:
                return call.result()
            except grpc.RpcError as e:
                raise ServerError(e.code(), e.details() or "") from None
            except KeyboardInterrupt:
                call.cancel()  # the server drops the call; a Session run already started ends on its own
                raise

        return with_retries(invoke, self.retries)

    def _wait_until_ready(self) -> None:
        if self._ready.is_set():
            return
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self.connect_timeout)
        except grpc.FutureTimeoutError:
            reason = self._connection_error()
            if reason is not None:
                raise ServerError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"cannot reach a model server at {self.server} within {self.connect_timeout:g} s: "
                    f"{reason}; {_hint(reason, self.tls)}",
                ) from None
        self._ready.set()

    def _connection_error(self) -> str | None:
        """Why the channel cannot connect, from one call that does not wait for it; None if it can now."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._model_spec())
        try:
            self._models.GetModelStatus(request, timeout=PROBE_TIMEOUT_S)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "no answer"
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                # "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8500: Socket closed"
                return re.sub(r"^.*last error: \w+: \S+: ", "", e.details() or "no answer")
        return None  # the server answered, if only to refuse the call: it is there


def _credentials(
    ca_file: str | os.PathLike | None, cert: str | os.PathLike | None, key: str | os.PathLike | None
) -> grpc.ChannelCredentials:
    """TLS credentials: the system's roots unless `ca_file`, and a client certificate if given."""
    if (cert is None) != (key is None):
        raise InputError("a client certificate needs its key, and a key its certificate: give both or neither")
    pem = {}
    for name, path in (("root_certificates", ca_file), ("certificate_chain", cert), ("private_key", key)):
        if path is not None:
            try:
                pem[name] = pathlib.Path(path).read_bytes()
            except OSError as e:
                raise InputError(f"cannot read the TLS file {path}: {e.strerror}") from None
    return grpc.ssl_channel_credentials(**pem)


def _channel(server: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(server, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(server, credentials, options=CHANNEL_OPTIONS)


def _hint(reason: str, tls: bool) -> str:
    """What to try, for the usual reasons a channel does not connect."""
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        return "the server's certificate is not signed by a CA this client trusts: pass that CA with --ca-file"
    if "WRONG_VERSION_NUMBER" in reason:
        return "the server does not speak TLS: drop --tls and --ca-file"
    if "Socket closed" in reason and tls:
        return "if the server requires a client certificate, pass one it trusts with --client-cert and --client-key"
    if "Socket closed" in reason:
        return "if the server uses TLS, pass --tls or --ca-file"
    return "is it running?"


def _style_batch(styles: list[tensor_pb2.TensorProto]) -> dict[str, tensor_pb2.TensorProto]:
    """Decoded styles as `pixels` takes them: one as it is; several zero-padded into one batch
    [styles, H, W, 3], each one's own size in `style_sizes`."""
    if len(styles) == 1:
        return {"style": styles[0]}
    arrays = [tensors.to_array(s) for s in styles]
    sizes = [a.shape[1:3] for a in arrays]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    batch = np.concatenate(
        [np.pad(a, [(0, 0), (0, height - h), (0, width - w), (0, 0)]) for a, (h, w) in zip(arrays, sizes, strict=True)]
    )
    return {"style": tensors.to_proto(batch), "style_sizes": tensors.to_proto(np.array(sizes, np.int32))}


def _result(response: predict_pb2.PredictResponse) -> Result:
    return Result(
        png=tensors.to_array(response.outputs["image_bytes"]).item(),
        losses={k: float(tensors.to_array(response.outputs[k])) for k in contract.LOSSES},
        model_version=response.model_spec.version.value,
    )
