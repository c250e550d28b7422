"""nst-devserver: a stand-in for tensorflow_model_server, for development and tests only.

It answers the gRPC API the real server offers for this model, and with --rest-port its REST
API (rest.py), and runs requests the way the real server does (see serving.py, which holds the
serving side), and follows the model folder as the real server does (--file-system-poll-wait-seconds).
It is no substitute in production: no batching, version policy or metrics; use the tensorflow/serving
image (Dockerfile.serving) there.

This module parses the command line before TensorFlow is imported, so `--help` and usage
errors are instant, and it keeps TensorFlow's start-up log lines off the terminal (`--verbose`
shows them): they are noise, and some look like failures (`failed call to cuInit: INTERNAL`
on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, NamedTuple

from nst_client.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_SERVER_ERROR
from nst_client.quiet import hidden_stderr, quiet_tensorflow

POLL_WAIT_S = 1.0  # tensorflow_model_server's --file_system_poll_wait_seconds default (model_servers/server.h)


def __getattr__(name: str) -> object:
    """The serving side's names (Model, serve, RunSlots, ...), for callers that import them from here:
    loaded, with TensorFlow, on first use. Dunder names are the import system's probes (`__path__`)."""
    if not name.startswith("__"):
        from nst_devserver import serving

        if hasattr(serving, name):
            return getattr(serving, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class StartError(Exception):
    """Start-up failed: the message for the user and the exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nst-devserver",
        description="Serve an exported model over TensorFlow Serving's gRPC API, for development and tests. "
        "Not for production: use the tensorflow/serving image (Dockerfile.serving).",
    )
    parser.add_argument(
        "--model-dir",
        default="models/nst",
        help="folder of numeric version folders, as --model_base_path (default models/nst)",
    )
    parser.add_argument("--model-name", help="name clients ask for, as --model_name (default: the folder's name)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all)"
    )
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0: any free port)")
    parser.add_argument(
        "--rest-port",
        type=int,
        help="also serve TF Serving's REST API on this port, as --rest_api_port (0: any free port; default: none)",
    )
    cores = os.cpu_count() or 1
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=cores,
        help=f"Predict calls run at once (default {cores}, one per CPU: each run uses every core)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=4 * cores,
        help=f"Predict calls waiting for a turn (default {4 * cores}); beyond them calls fail RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--file-system-poll-wait-seconds",
        type=float,
        default=POLL_WAIT_S,
        metavar="SECONDS",
        help="look for new, changed and deleted version folders this often, as --file_system_poll_wait_seconds "
        f"(default {POLL_WAIT_S:g}; 0: only at start)",
    )
    tls = parser.add_argument_group("TLS (default: plaintext)")
    tls.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain (needs --tls-key)")
    tls.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    tls.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA (mTLS)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's start-up log lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_concurrent < 1 or args.max_queue < 0:
        parser.error("--max-concurrent must be at least 1 and --max-queue at least 0")
    if not args.file_system_poll_wait_seconds >= 0:  # also refuses nan
        parser.error("--file-system-poll-wait-seconds must be at least 0")
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        parser.error("--tls-cert and --tls-key go together; --tls-client-ca needs both")
    quiet_tensorflow(args.verbose)
    try:
        with hidden_stderr(hidden=not args.verbose):
            started = start(args)
    except StartError as e:
        parser.exit(e.exit_code, f"nst-devserver: error: {e}\n")
    model, server = started.model, started.server
    versions = ", ".join(str(v) for v in sorted(model.versions))
    print(
        f"nst-devserver: serving model {model.name!r} (versions {versions}; {started.warmed} warmup requests "
        f"replayed) on {args.host}:{started.port}; {'TLS' if started.tls else 'plaintext'}, "
        f"{f'REST (plaintext) on port {started.rest_port}, ' if started.rest else ''}"
        f"{args.max_concurrent} runs at once, {args.max_queue} queued; a development stand-in for "
        "tensorflow_model_server",
        flush=True,
    )
    for line in started.pending:  # versions that failed to load at start, told once stderr is the user's again
        print(line, file=sys.stderr, flush=True)
    if args.file_system_poll_wait_seconds > 0:
        model.start_polling(args.file_system_poll_wait_seconds)

    def stop(*_: object) -> None:
        started.health.enter_graceful_shutdown()  # probes hear NOT_SERVING while calls in flight finish
        server.stop(grace=5)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    server.wait_for_termination()
    if started.rest is not None:
        started.rest.shutdown()
        started.rest.server_close()
    model.close()
    return EXIT_OK


class Started(NamedTuple):
    model: Any  # serving.Model; serving.py is imported only after the arguments are parsed
    server: Any  # grpc.Server
    port: int
    warmed: int  # warmup requests replayed
    tls: bool
    health: Any  # grpc_health.v1.health.HealthServicer
    rest: Any = None  # http.server.ThreadingHTTPServer, with --rest-port
    rest_port: int | None = None
    pending: tuple[str, ...] = ()  # log lines of the start, hidden with TensorFlow's until it succeeds


def start(args: argparse.Namespace) -> Started:
    """Import TensorFlow, load and warm up every version (a folder that fails is left to polling), and listen."""
    import tensorflow as tf
    from grpc_health.v1.health import HealthServicer

    from nst_devserver.serving import Model, RunSlots, log_line, serve, server_credentials

    credentials = None
    if args.tls_cert:
        try:
            credentials = server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
        except OSError as e:
            raise StartError(f"cannot read {e.filename}: {e.strerror}", EXIT_BAD_INPUT) from None
    pending: list[str] = []
    try:
        model = Model.load(args.model_dir, args.model_name, log=pending.append)
    except (OSError, tf.errors.OpError) as e:
        raise StartError(f"cannot load {args.model_dir}: {e}", EXIT_BAD_INPUT) from None
    try:
        warmed = model.warm_up()
        slots = RunSlots(args.max_concurrent, args.max_queue)
        health = HealthServicer()
        server, port = serve(model, args.host, args.port, slots=slots, credentials=credentials, health_checks=health)
        rest, rest_port = None, None
        if args.rest_port is not None:  # the same run slots: REST and gRPC calls share the bound
            from nst_devserver.rest import serve_rest

            rest, rest_port = serve_rest(model, args.host, args.rest_port, slots)
    except (RuntimeError, OSError) as e:
        model.close()
        raise StartError(str(e), EXIT_SERVER_ERROR) from None
    model.log = log_line  # from now on, straight to stderr
    return Started(model, server, port, warmed, credentials is not None, health, rest, rest_port, tuple(pending))


if __name__ == "__main__":
    sys.exit(main())
