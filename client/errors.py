"""Errors the client raises, each with the exit code the command line uses for it.

Server failures keep the server's status code and message, so an operator sees what
tensorflow_model_server said rather than a traceback. Codes are compared by name, so this
module does not import grpc: `nst-client --help` and usage errors stay instant.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .settings import BUSY_BACKOFF_BASE_S, BUSY_BACKOFF_CAP_S

if TYPE_CHECKING:
    import grpc

T = TypeVar("T")

EXIT_OK = 0
EXIT_SERVER_ERROR = 1  # any other server status (NOT_FOUND, FAILED_PRECONDITION, INTERNAL, ...)
EXIT_BAD_INPUT = 2  # usage errors, unreadable images, INVALID_ARGUMENT from the model
EXIT_UNREACHABLE = 3  # no server at the address, or UNAVAILABLE after the retries
EXIT_DEADLINE = 4  # the call ran past --timeout (DEADLINE_EXCEEDED)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

_EXIT_CODES = {"INVALID_ARGUMENT": EXIT_BAD_INPUT, "UNAVAILABLE": EXIT_UNREACHABLE, "DEADLINE_EXCEEDED": EXIT_DEADLINE}


class ClientError(Exception):
    """A failure worth one line to the user; `exit_code` is what nst-client exits with."""

    exit_code = EXIT_SERVER_ERROR


class InputError(ClientError, ValueError):
    """A local input the client cannot send: a missing file, an unreadable image, a bad option."""

    exit_code = EXIT_BAD_INPUT


class ServerError(ClientError):
    """A call the server (or the channel to it) failed, with its gRPC status code.

    `message` is the server's message without TensorFlow's assertion decoration; `details`
    keeps it whole.
    """

    def __init__(self, code: grpc.StatusCode, details: str):
        self.code = code
        self.details = details
        self.message = clean_message(details)
        if code.name == "RESOURCE_EXHAUSTED" and _OUT_OF_MEMORY.search(details):
            self.message = f"the server ran out of memory for this run ({_oom_line(self.message)}): {OOM_ADVICE}"
        super().__init__(f"{code.name}: {self.message}")

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES.get(self.code.name, EXIT_SERVER_ERROR)

    @property
    def retryable(self) -> bool:
        """Whether sending the call again may succeed (see RETRYABLE): RESOURCE_EXHAUSTED only when the
        server was busy, not when the run itself does not fit, which fails the same way every time."""
        if self.code.name == "RESOURCE_EXHAUSTED":
            return not (_OUT_OF_MEMORY.search(self.details) or _TOO_LARGE_MESSAGE in self.details)
        return self.code.name in RETRYABLE

    @property
    def busy(self) -> bool:
        """Whether the server refused the call for want of room (a wait), rather than went away."""
        return self.retryable and self.code.name == "RESOURCE_EXHAUSTED"


def clean_message(details: str) -> str:
    """The line of a TensorFlow error that says what is wrong, without its decoration: the project's
    one error-line cleaner, for the server's messages and for in-process ones.

    "assertion failed: [steps must be between 0 and 10000; got] [-1]\\n\\t [[{{node ...}}]]"
    becomes "steps must be between 0 and 10000; got -1". In-process errors wrap that line in a
    traceback ("Graph execution error: ... Detected at node ..."): the reason is the assertion,
    else the line just above the first "[[{{node ...}}]]" marker, else the first line.
    """
    lines = [line for line in details.strip().splitlines() if line.strip()]
    marker = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[[")), None)
    assertion = next((line for line in lines if line.startswith("assertion failed: ")), None)
    line = assertion or (lines[marker - 1] if marker else lines[0] if lines else "")
    if not line.startswith("assertion failed: "):
        return line.strip()
    line = line.removeprefix("assertion failed: ").replace("] [", " ").strip()
    return line[1:-1] if line.startswith("[") and line.endswith("]") else line  # keeps "[0, 1]"


# Codes that say a call was lost or refused for want of room, not for what it asks, so that sending it
# again may succeed; runs are pure functions of their inputs, so that is safe. UNAVAILABLE: no server
# (restarting, unreachable) or the connection broke mid-call (a replica killed or shut down: "Socket
# closed", "Cancelling all calls"); CANCELLED: the other end (a server shutting down, a proxy) cancelled
# the call: the client's own cancel (Ctrl-C) raises KeyboardInterrupt and never becomes a ServerError;
# RESOURCE_EXHAUSTED: the server is busy ("Server Threadpool Exhausted" from the stock server, "server
# busy" from nst-devserver, a proxy's limits), unless the run itself does not fit: out of memory, or a
# message over gRPC's size limit. INVALID_ARGUMENT and DEADLINE_EXCEEDED would only fail again.
RETRYABLE = frozenset({"UNAVAILABLE", "CANCELLED", "RESOURCE_EXHAUSTED"})  # grpc.StatusCode names
# TensorFlow's "OOM when allocating tensor with shape[...]" (CPU and GPU allocators), XLA's "Out of memory
# while trying to allocate", the BFC allocator's "ran out of memory": the run needs more than the server has.
_OUT_OF_MEMORY = re.compile(r"\bOOM\b|out of memory", re.IGNORECASE)
_TOO_LARGE_MESSAGE = "message larger than max"  # gRPC's size limit: the same message fails again
OOM_ADVICE = "lower max_dim, or the runs a server takes at once (--grpc_max_threads; nst-devserver --max-concurrent)"


def _oom_line(message: str) -> str:
    """TensorFlow's OOM line down to what it tried to allocate: its device and allocator names add nothing."""
    return message.split(" and type ")[0] if message.startswith("OOM when allocating") else message


@dataclasses.dataclass
class Waiting:
    """How long the calls of a run waited for a free replica: `total_s` in all, and `report(seconds)`
    told how long the call in hand has waited so far, before each pause (a progress bar shows it)."""

    report: Callable[[float], None] | None = None
    total_s: float = 0.0


def with_retries(
    call: Callable[[], T], retries: int, wait_s: float = 0.0, replicas: int = 1, waiting: Waiting | None = None
) -> T:
    """`call()`, tried again while it fails for want of a server; any other error is final.

    A busy refusal (RESOURCE_EXHAUSTED, not out of memory) is a wait, not a failure: the next try goes at
    once while other replicas may have room (each try goes to the next of `replicas`), and once each has
    refused, after a pause with full jitter (settings.BUSY_BACKOFF_*), until `wait_s` seconds have passed
    since the first refusal (0: each replica is tried once). A server gone (UNAVAILABLE, CANCELLED) is
    tried again up to `retries` times, with jittered exponential backoff (0.25 s doubling, at most 4 s):
    a budget of its own, since a dead replica does not come back by waiting long.
    """
    gone = refused = 0
    first_refusal = None
    while True:
        started = time.monotonic()
        try:
            result = call()
            if waiting is not None and first_refusal is not None:
                waiting.total_s += started - first_refusal
            return result
        except ServerError as e:
            if not e.retryable:
                raise
            if not e.busy:
                if gone >= retries:
                    raise
                time.sleep(min(0.25 * 2**gone, 4.0) * random.uniform(0.8, 1.2))
                gone += 1
                continue
            now = time.monotonic()
            first_refusal = now if first_refusal is None else first_refusal
            refused += 1
            if refused % max(replicas, 1):
                continue  # at once: another replica may have room
            waited = now - first_refusal
            if waited >= wait_s:
                if wait_s:
                    raise ServerError(e.code, f"{e.details} (every replica stayed busy for {waited:.0f} s)") from None
                raise
            if waiting is not None and waiting.report is not None:
                waiting.report(waited)
            rounds = refused // max(replicas, 1) - 1
            pause = random.uniform(0, min(BUSY_BACKOFF_CAP_S, BUSY_BACKOFF_BASE_S * 2**rounds))
            time.sleep(min(pause, wait_s - waited))
