"""Style transfer through TensorFlow Serving's gRPC API.

A run is either one `serving_default` call (encoded images in, PNG out) or, for progress,
`decode` for each image and then `pixels` in chunks that hand the optimiser state on; both
give the same PNG, because the state is the model's whole loop carry.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pathlib
import re
import socket
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

from . import chunked, contract, tensors
from .contract import Result
from .errors import ClientError, InputError, ServerError, Waiting, with_retries
from .images import ImageLike, encode
from .settings import (
    DEFAULT_CHUNK,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_RETRIES,
    DEFAULT_SCALES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WAIT_S,
)

CHANNEL_OPTIONS = (
    # The server accepts messages up to 2 GiB; gRPC's Python default receive limit is 4 MiB.
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Every call goes to the next connected replica: a list, a name that resolves to several addresses
    # (dns:///headless-service:8500). A replica that goes away leaves the rotation until it reconnects.
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    # A call runs for minutes with nothing on the wire: ping while calls are in flight, so that a load
    # balancer or NAT that drops idle connections sees traffic and a dead replica is noticed (no ack in
    # 20 s) rather than waited on until the deadline. Servers refuse pings more often than every 5 minutes
    # while no data flows (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, which
    # tensorflow_model_server leaves at gRPC's default) and close the connection with GOAWAY
    # "too_many_pings" after two such; a ping goes out 5 minutes after the last one's ack, so none is early.
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),  # by default gRPC stops after 2 pings in a call that sends nothing
    # Without calls servers accept a ping once in 2 hours, so none is sent (keepalive_permit_without_calls
    # stays 0); instead an idle channel closes its connections before a load balancer silently drops them
    # (Azure's default idle timeout is 4 minutes), and the next call connects afresh.
    ("grpc.client_idle_timeout_ms", 180_000),
)
# gRPC target URIs whose schemes grpcio resolves itself, passed on as they are (a list is "ipv4:a,b").
TARGET_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds")
PROBE_TIMEOUT_S = 2.0  # how long the call that asks why a channel cannot connect may take


class NSTClient:
    """Style transfer on TensorFlow Serving gRPC endpoints that serve the exported model.

    `server` is "host:port", a list of replicas "host:port,host:port,..." or a gRPC target URI
    ("dns:///headless-service:8500"); calls go round-robin to the replicas that are up. Names in
    a list are looked up once, here; a `dns:` target is looked up again as connections close.

    `timeout` is the deadline of each call in seconds (None: no deadline); the server stops
    the run when it passes. The first call waits up to `connect_timeout` seconds for a
    server. A call every replica refuses as busy (RESOURCE_EXHAUSTED) waits for a free one for
    up to `wait` seconds, trying the other replicas first, then pausing with full jitter; a call
    whose replica went away (UNAVAILABLE, CANCELLED by the server) is retried `retries` times with
    backoff, on another replica where there is one. Runs are pure functions of their inputs, so a
    chunked run goes on from its last finished chunk.

    TLS: `tls=True` trusts the system's root certificates, `ca_file` (implies TLS) a PEM file of
    CA certificates instead; `client_cert` and `client_key` (PEM) add a client certificate for
    servers that require one. Certificates must carry the host named in `server`, or
    `tls_server_name` (implies TLS; a list of different hosts needs it: one channel checks one
    name). Or pass your own `channel`.

    The served signatures are fetched once, at the first run: they type the options sent.
    A client is safe to share between threads.
    """

    def __init__(
        self,
        server: str = "localhost:8500",
        *,
        model_name: str = "nst",
        version: int | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        wait: float = DEFAULT_WAIT_S,
        tls: bool = False,
        ca_file: str | os.PathLike | None = None,
        client_cert: str | os.PathLike | None = None,
        client_key: str | os.PathLike | None = None,
        tls_server_name: str | None = None,
        channel: grpc.Channel | None = None,
    ):
        self.server = server
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.wait = wait
        self.tls = tls or any(arg is not None for arg in (ca_file, client_cert, client_key, tls_server_name))
        if channel is None:
            target, options = channel_target(server, tls_server_name, self.tls)
            credentials = _credentials(ca_file, client_cert, client_key) if self.tls else None
            channel = _channel(target, credentials, options)
            self._replicas = replica_count(target)
        else:
            self._replicas = 1
        self._channel = channel
        self._closed = False
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
        chunk: int = DEFAULT_CHUNK,
        progress: chunked.Progress | None = None,
        **options: object,
    ) -> PIL.Image.Image:
        """`content` painted in `style`, as a PIL image; see `run` for the arguments."""
        return self.run(content, style, chunk=chunk, progress=progress, **options).image

    def run(
        self,
        content: ImageLike,
        style: ImageLike | Sequence[ImageLike],
        *,
        chunk: int = DEFAULT_CHUNK,
        progress: chunked.Progress | None = None,
        checkpoint: chunked.Checkpoint | None = None,
        checkpoint_every: int = 0,
        scales: Sequence[int] = DEFAULT_SCALES,
        on_wait: Callable[[float], None] | None = None,
        mask: ImageLike | None = None,
        **options: object,
    ) -> Result:
        """Run the model on a content image and one or more style images (paths, encoded bytes,
        PIL images or arrays).

        Options are the model's own inputs (steps, max_dim, style_weight, ...: `nst-client
        signatures` lists them), typed from the served signature; left out or None, the model's
        default applies. `chunk` > 0 runs `chunk` steps per call and reports to `progress`
        before the first call and after each; 0 sends one call. `checkpoint(steps, png)` gets the
        image every `checkpoint_every` steps; `scales` runs coarse-to-fine (nst_client.chunked.plan).
        `on_wait(seconds)` hears how long a call has waited for a free replica, before each pause; the
        result's `waited_s` is the run's whole wait. Every call of a run goes to the version that took
        its first call. Ctrl-C raises nst_client.chunked.Interrupted with the last finished image.
        `mask` (an image whose flat colours are regions) paints each region with the style that the
        `mask_styles` option gives it (docs/controls.md).
        """
        if chunk < 0:
            raise InputError(f"chunk must be >= 0; got {chunk}")
        signature = self._served_signatures()[contract.SERVING_DEFAULT]
        values = contract.typed_options(options, signature)
        defaults = {k: tensors.to_array(v) for k, v in signature.defaults.items()}
        if "steps" not in values:
            self.default_steps()  # refuses a model that declares none
        content_bytes = encode(content, "content")
        styles = [encode(s, "style") for s in contract.as_list(style)]
        version = self.version
        waiting = Waiting(on_wait)

        def call(signature: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
            nonlocal version
            protos = {k: tensors.to_proto(v) for k, v in inputs.items()}
            response = self._predict(signature, protos, outputs, version, waiting)
            version = response.model_spec.version.value  # every call of the run uses this version
            return {k: tensors.to_array(v) for k, v in response.outputs.items()}

        result = chunked.run(
            call,
            content_bytes,
            styles,
            values,
            defaults,
            chunk=chunk,
            progress=progress,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            scales=scales,
            mask=None if mask is None else encode(mask, "mask"),
        )
        return dataclasses.replace(result, model_version=version, waited_s=waiting.total_s)

    def default_steps(self) -> int:
        """The model's default number of steps, from its serving_default signature."""
        signature = self._served_signatures()[contract.SERVING_DEFAULT]
        if "steps" not in signature.defaults:
            raise ClientError(f"model {self.model_name!r} declares no default steps; pass steps explicitly")
        return int(tensors.to_array(signature.defaults["steps"]))

    def limits(self) -> dict[str, int] | None:
        """The limits the served version enforces (its `limits` signature); None for an export
        made before it had one."""
        if contract.LIMITS not in self._served_signatures():
            return None
        return {k: int(v) for k, v in self.predict(contract.LIMITS, {}).items()}

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
        self._closed = True
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
        waiting: Waiting | None = None,
    ) -> predict_pb2.PredictResponse:
        request = predict_pb2.PredictRequest(
            model_spec=self._model_spec(signature, version), output_filter=list(output_filter)
        )
        for name, proto in inputs.items():
            request.inputs[name].CopyFrom(proto)
        return self._call(self._predictions.Predict, request, waiting)

    def _call(
        self, method: grpc.UnaryUnaryMultiCallable, request: message.Message, waiting: Waiting | None = None
    ) -> Any:
        """`method(request)` with the deadline; retryable failures are tried again (each try goes to the next
        replica that is up, see errors.with_retries), other errors raise ServerError."""
        self._wait_until_ready()

        def invoke() -> Any:
            call = method.future(request, timeout=self.timeout)
            try:
                return call.result()
            except grpc.RpcError as e:
                if self._closed:  # close() from another thread cancelled it: not the server's doing
                    raise ClientError("the client was closed during the call") from None
                # A CANCELLED here is the server's or a proxy's (a replica shutting down), never the user's:
                # this client cancels only on KeyboardInterrupt, which propagates as itself.
                raise ServerError(e.code(), e.details() or "") from None
            except KeyboardInterrupt:
                call.cancel()  # the server drops the call; a Session run already started ends on its own
                raise

        return with_retries(invoke, self.retries, self.wait, self._replicas, waiting)

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


def _channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]]
) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target, options=[*CHANNEL_OPTIONS, *options])
    return grpc.secure_channel(target, credentials, options=[*CHANNEL_OPTIONS, *options])


def server_list(server: str) -> list[tuple[str, int]] | None:
    """The (host, port) replicas of a list "host:port,host:port,...", IPv6 hosts in brackets; None for one
    address or a gRPC target URI ("dns:///name:port", "ipv4:a:p,b:p"), which gRPC resolves itself."""
    if server.split(":", 1)[0] in TARGET_SCHEMES or "," not in server:
        return None
    replicas = []
    for entry in server.split(","):
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^\s:\[\]/]+):(\d+)", entry.strip())
        if not match or not 1 <= int(match[2] or match[4]) <= 65535:
            raise InputError(f"each server of a list must be host:port or [IPv6]:port, port 1 to 65535; got {entry!r}")
        replicas.append((match[1] or match[3], int(match[2] or match[4])))
    return replicas


def list_target(replicas: Sequence[tuple[str, int]], resolve: Callable[..., list] = socket.getaddrinfo) -> str:
    """The gRPC target for a list of replicas: grpcio resolves a list only in an "ipv4:" or "ipv6:" URI of
    addresses, one family per URI, so names are looked up here (every address of a name is a replica)."""
    found: dict[socket.AddressFamily, dict[str, None]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
    families_of = []
    for host, port in replicas:
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = resolve(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as e:
                raise ServerError(grpc.StatusCode.UNAVAILABLE, f"cannot look up the server {host!r}: {e}") from None
            addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        families = set()
        for address in addresses:
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            families.add(family)
            found[family][f"{address}:{port}" if address.version == 4 else f"[{address}]:{port}"] = None
        families_of.append(families)
    for family, scheme in ((socket.AF_INET, "ipv4"), (socket.AF_INET6, "ipv6")):
        if all(family in families for families in families_of):
            return f"{scheme}:" + ",".join(found[family])
    raise InputError(
        "the servers of a list must all have IPv4 or all have IPv6 addresses (gRPC takes one family per list); "
        "use a DNS name that returns them all, as dns:///name:port"
    )


def replica_count(target: str, resolve: Callable[..., list] = socket.getaddrinfo) -> int:
    """How many replicas a channel's calls go round: the addresses of an "ipv4:"/"ipv6:" list, those a
    DNS name has now (best effort: 1 where it does not resolve), 1 for other targets. Busy refusals are
    tried on as many replicas at once before the client pauses."""
    scheme, _, rest = target.partition(":")
    if scheme in ("ipv4", "ipv6"):
        return len(rest.split(","))
    if scheme in TARGET_SCHEMES and scheme != "dns":
        return 1
    address = target.removeprefix("dns:").rsplit("/", 1)[-1]  # dns:[//authority/]host:port
    host, port = re.fullmatch(r"\[?(.*?)\]?(?::(\d+))?", address).groups()
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return 1
    return max(1, len({info[4][0] for info in infos}))


def channel_target(server: str, tls_server_name: str | None, tls: bool) -> tuple[str, list[tuple[str, Any]]]:
    """The target a channel dials for `server`, and the options that name it: a list's target is its
    addresses, so the first replica's host:port is the authority, which TLS checks certificates against."""
    options: list[tuple[str, Any]] = []
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    replicas = server_list(server)
    if replicas is None:
        return server, options
    if tls and not tls_server_name and len({host for host, _ in replicas}) > 1:
        raise InputError(
            "with TLS, a list of different hosts needs --tls-server-name (tls_server_name): the name all "
            "their certificates carry, since one channel checks one name"
        )
    host, port = replicas[0]
    options.append(("grpc.default_authority", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"))
    return list_target(replicas), options


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
