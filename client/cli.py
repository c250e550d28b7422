"""nst-client: style transfer on a TensorFlow Serving model server, with a progress bar.

Server failures print the server's status code and message, and the exit code says what
kind of failure it was (see EPILOG), so scripts can tell bad input from an outage. Every
failure is one line on stderr, never a traceback.

The arguments are parsed before grpc and TensorFlow's protos (which load all of TensorFlow,
seconds to tens of seconds) are imported, so `--help` and usage errors are instant and
TensorFlow's start-up log lines can be silenced first.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

import tqdm

from . import contract, errors
from .chunked import Interrupted, scales_problem
from .errors import ClientError, InputError, ServerError
from .flags import add_mask_flags, add_scales_flag
from .output import Checkpoints, checkpoint_path, prepare_output, save
from .progress import ProgressBar
from .quiet import quiet_tensorflow
from .settings import DEFAULT_CHUNK, DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, DEFAULT_WAIT_S

if TYPE_CHECKING:
    from .grpc_client import NSTClient
    from .rest_client import RestClient

COMMANDS = ("status", "signatures")
EPILOG = f"""\
commands:
  nst-client [options] CONTENT STYLE [STYLE ...]   paint CONTENT in the style(s), write a PNG
  nst-client [options] status                      the model's versions on the server, their state
  nst-client [options] signatures                  the served signatures: inputs, defaults, outputs

exit codes:
  {errors.EXIT_OK}  success
  {errors.EXIT_SERVER_ERROR}  the server failed the call (e.g. NOT_FOUND: no such model or version; RESOURCE_EXHAUSTED:
     every replica stayed busy for --wait seconds)
  {errors.EXIT_BAD_INPUT}  bad input: usage, an unreadable image, or INVALID_ARGUMENT from the model
  {errors.EXIT_UNREACHABLE}  no server at the address (UNAVAILABLE after the retries)
  {errors.EXIT_DEADLINE}  a call ran past --timeout (DEADLINE_EXCEEDED)
  {errors.EXIT_INTERRUPTED}  interrupted (Ctrl-C): the call in flight is cancelled
"""
# Options with their own flags; every other model input is set with -O NAME=VALUE.
OPTION_FLAGS = {
    "steps": "optimisation steps",
    "max_dim": "longest side, in pixels, both images are resized to",
    "style_weight": "weight of the style loss",
    "content_weight": "weight of the content loss",
    "tv_weight": "weight of the total-variation (smoothness) loss",
    "learning_rate": "Adam learning rate",
}
# Keywords of NSTClient.run that are not model inputs (the images and `chunk` have flags or arguments).
NOT_OPTIONS = {"progress": "the progress bar shows unless --quiet"}
MAX_VERSION = 2**63 - 1  # versions are int64 in the ModelSpec


def _version(text: str) -> int:
    """A model version, as the ModelSpec's int64 holds it."""
    try:
        version = int(text)
    except ValueError:
        version = 0
    if not 1 <= version <= MAX_VERSION:
        raise argparse.ArgumentTypeError(f"must be a version number from 1 to {MAX_VERSION}; got {text!r}")
    return version


def _seconds(text: str, zero: bool) -> float:
    """A finite number of seconds > 0, or 0 where `zero` allows it (no limit); inf and NaN would fail every call."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds > 0{' (0: none)' if zero else ''}; got {text!r}"
        )
    return seconds


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0; got {text!r}")
    return count


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other failure; the usage is one --help away."""

    def error(self, message: str) -> NoReturn:
        self.exit(errors.EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nst-client",
        usage="nst-client [options] (CONTENT STYLE [STYLE ...] | status | signatures)",
        description="Neural style transfer on a TensorFlow Serving model server (gRPC, or REST with --rest).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("args", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("-o", "--output", default="stylized.png", help="output PNG (default stylized.png)")
    parser.add_argument(
        "--chunk",
        type=_count,
        help=f"steps per call, with a progress bar (default {DEFAULT_CHUNK}); 0: one call",
    )
    parser.add_argument(
        "--save-every",
        type=_count,
        default=0,
        metavar="N",
        help="also write the image every N steps, as OUTPUT_0100.png and so on (default: only at the end)",
    )
    add_scales_flag(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's start-up log lines")

    server = parser.add_argument_group("server")
    server.add_argument(
        "--server",
        default="localhost:8500",
        help="gRPC address host:port, or replicas: host:port,host:port,... (names looked up once, at start) or a "
        "gRPC target such as dns:///headless-service:8500 (looked up again as connections close); calls go "
        "round-robin to the replicas that are up (default %(default)s)",
    )
    server.add_argument(
        "--rest",
        metavar="URL",
        help="use the REST API at URL (e.g. http://localhost:8501) instead of gRPC: one call per run, no progress",
    )
    server.add_argument("--model-name", default="nst", help="model name on the server (default %(default)s)")
    server.add_argument("--model-version", type=_version, help="a specific model version (default: the newest served)")
    server.add_argument(
        "--timeout",
        type=lambda text: _seconds(text, zero=True),
        default=DEFAULT_TIMEOUT_S,
        help="deadline of each call in seconds, after which the server stops it (default %(default)g; 0: none)",
    )
    server.add_argument(
        "--connect-timeout",
        type=lambda text: _seconds(text, zero=False),
        default=DEFAULT_CONNECT_TIMEOUT_S,
        help="seconds to wait for the gRPC server to accept a connection (default %(default)g)",
    )
    server.add_argument(
        "--wait",
        type=lambda text: _seconds(text, zero=True),
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help="how long each call waits for a free replica while all refuse it as busy (RESOURCE_EXHAUSTED): "
        "the other replicas at once, then again after pauses of a few seconds (default %(default)g; 0: fail)",
    )
    server.add_argument(
        "--retries",
        type=_count,
        default=DEFAULT_RETRIES,
        help="retries, with backoff and on another replica where there is one, of calls whose server went away: "
        "UNAVAILABLE, CANCELLED by the server (default %(default)s)",
    )

    tls = parser.add_argument_group("TLS (gRPC; default: plaintext)")
    tls.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's root certificates")
    tls.add_argument("--ca-file", metavar="PEM", help="connect with TLS, trusting the CA certificates in this file")
    tls.add_argument("--client-cert", metavar="PEM", help="client certificate, for servers that require one (mTLS)")
    tls.add_argument("--client-key", metavar="PEM", help="the client certificate's private key")
    tls.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="connect with TLS, checking that the servers' certificates carry NAME (default: the host in --server; "
        "a list of different hosts needs it)",
    )

    model = parser.add_argument_group(
        "model options",
        "Left out, an option is not sent and the model's own default applies. Values are typed\n"
        "from the served signature: `nst-client signatures` lists every option and its default.",
    )
    for name, help_text in OPTION_FLAGS.items():
        model.add_argument("--" + name.replace("_", "-"), dest=name, help=f"{help_text} (default: the model's)")
    add_mask_flags(model)
    model.add_argument(
        "-O",
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other input of the model, e.g. -O style_scale=1.5 -O init=noise -O preserve_colors=true "
        "-O style_weights=0.7,0.3 (vectors: comma-separated)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with `command` set to "stylize", "status" or "signatures"."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.args) == 1 and args.args[0] in COMMANDS:
        args.command = args.args[0]
    elif len(args.args) >= 2:
        args.command = "stylize"
    else:
        parser.error("expected CONTENT STYLE [STYLE ...], 'status' or 'signatures'")
    args.options = {name: getattr(args, name) for name in (*OPTION_FLAGS, "mask_styles")}
    flags = {action.dest: action.option_strings[-1] for action in parser._actions if action.option_strings}
    for assignment in args.option:
        name, equals, value = assignment.partition("=")
        if not equals or not name:
            parser.error(f"-O takes NAME=VALUE; got {assignment!r}")
        if name in flags:
            parser.error(f"-O {name}: use {flags[name]} (-O sets the model's other inputs)")
        if name in contract.IMAGES:
            parser.error(f"-O {name}: the images are the arguments, CONTENT STYLE [STYLE ...]")
        if name in NOT_OPTIONS:
            parser.error(f"-O {name}: not a model input; {NOT_OPTIONS[name]}")
        if name in args.options:
            parser.error(f"-O {name} is given twice")
        args.options[name] = value
    if args.rest and (args.tls or args.ca_file or args.client_cert or args.client_key or args.tls_server_name):
        parser.error(
            "--tls, --ca-file, --tls-server-name and client certificates are for gRPC; over REST use an https:// URL"
        )
    if args.mask_styles is not None and args.mask is None:
        parser.error("--mask-styles needs --mask")
    if args.rest and args.chunk:
        parser.error("--chunk needs gRPC: over REST a run is one call")
    if args.rest and args.save_every:
        parser.error("--save-every needs gRPC: over REST a run is one call")
    if args.rest and args.scales:
        parser.error("--scales needs gRPC: over REST a run is one call")
    given_max_dim = args.max_dim is not None and args.max_dim.strip().isdigit()  # else the server's: checked then
    if given_max_dim and (problem := scales_problem(args.scales, int(args.max_dim))):
        parser.error(problem)
    if args.command == "stylize" and (problem := prepare_output(pathlib.Path(args.output))):
        parser.error(problem)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_tensorflow(args.verbose)
    command = {"stylize": stylize, "status": print_status, "signatures": print_signatures}[args.command]
    client = None
    try:
        client = make_client(args)
        command(client, args)
    except ClientError as e:
        hint = ""
        if isinstance(e, ServerError) and e.code.name == "DEADLINE_EXCEEDED":
            lower = "" if args.rest else ", or lower --chunk"  # over REST a run is one call
            hint = f" (each call may take {args.timeout:g} s: raise --timeout{lower})"
        print(f"nst-client: error: {e}{hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        # A Session run cannot be stopped midway, by this client or by the server.
        print(
            "nst-client: interrupted; the call in flight is cancelled, but the server finishes the chunk it is "
            "running (with --chunk 0, the whole run, unless --timeout ends it first)",
            file=sys.stderr,
        )
        return errors.EXIT_INTERRUPTED
    finally:
        if client is not None and not args.rest:  # a REST client holds no connection
            client.close()
    return errors.EXIT_OK


def make_client(args: argparse.Namespace) -> NSTClient | RestClient:
    common = {
        "model_name": args.model_name,
        "version": args.model_version,
        "timeout": args.timeout or None,
        "retries": args.retries,
        "wait": args.wait,
    }
    if args.rest:
        from .rest_client import RestClient

        return RestClient(args.rest, **common)
    from .grpc_client import NSTClient

    return NSTClient(
        args.server,
        **common,
        connect_timeout=args.connect_timeout,
        tls=args.tls,
        ca_file=args.ca_file,
        client_cert=args.client_cert,
        client_key=args.client_key,
        tls_server_name=args.tls_server_name,
    )


def stylize(client: NSTClient | RestClient, args: argparse.Namespace) -> None:
    content, *styles = args.args
    started = time.perf_counter()
    output = pathlib.Path(args.output)
    # A checkpoint that cannot be written is a warning above the bar; only the final output decides the exit.
    checkpoints = Checkpoints(output, lambda line: tqdm.tqdm.write(f"nst-client: warning: {line}", file=sys.stderr))
    announced = False

    def announce_wait(seconds: float) -> None:  # a one-call run has no progress bar to show its wait
        nonlocal announced
        if not announced:
            announced = True
            print(f"nst-client: every replica is busy; waiting up to {args.wait:g} s for a free one", file=sys.stderr)

    mask = {} if args.mask is None else {"mask": args.mask}
    if args.rest:
        result = client.run(content, styles, **mask, **args.options)
    else:
        chunk = DEFAULT_CHUNK if args.chunk is None else args.chunk
        one_call = chunk == 0 and not args.save_every and not args.scales
        try:
            with ProgressBar(disable=args.quiet or one_call) as bar:
                result = client.run(
                    content,
                    styles,
                    chunk=chunk,
                    progress=bar,
                    checkpoint=checkpoints if args.save_every else None,
                    checkpoint_every=args.save_every,
                    scales=args.scales,
                    on_wait=bar.waiting if not one_call else None if args.quiet else announce_wait,
                    **mask,
                    **args.options,
                )
        except Interrupted as e:
            if e.png is not None:
                saved = save(checkpoint_path(output, e.done), e.png)
                print(f"nst-client: {saved.outcome(f'the image after {e.done} steps')}", file=sys.stderr)
            raise
    saved = save(output, result.png)
    if saved.problem:  # the image is elsewhere (or lost): said in one line, and the exit is not 0
        raise InputError(saved.outcome("the image"))
    if not args.quiet:
        losses = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
        version = f" by version {result.model_version}" if result.model_version is not None else ""
        waited = f", {result.waited_s:.1f} s of it waiting for a free replica" if result.waited_s else ""
        print(
            f"wrote {args.output} ({result.image.width}x{result.image.height}) in "
            f"{time.perf_counter() - started:.1f} s{version}{waited}; {losses}",
            file=sys.stderr,
        )


def print_status(client: NSTClient | RestClient, args: argparse.Namespace) -> None:
    statuses = client.status()
    print(f"model {client.model_name!r} at {args.rest or args.server}")
    for status in statuses:
        state = status.State.Name(status.state)
        problem = status.status.error_message
        print(f"  version {status.version}: {state}" + (f" ({problem})" if problem else ""))


def print_signatures(client: NSTClient | RestClient, args: argparse.Namespace) -> None:
    from . import tensors  # TensorFlow's protos, which load all of TensorFlow

    version, signatures = client.signatures()
    print(f"model {client.model_name!r} version {version} at {args.rest or args.server}")
    if not args.rest:
        print(contract.limits_line(client.limits()))
    elif contract.LIMITS in signatures:  # the stock REST API calls no signature without inputs (GetInfoMap)
        print("limits: not readable over REST (a signature without inputs); nst-client without --rest shows them")
    else:
        print(contract.limits_line(None))
    for name in sorted(signatures):
        print("\n".join(contract.signature_lines(name, signatures[name], tensors.dtype_name, shapes=True)))


if __name__ == "__main__":
    sys.exit(main())
