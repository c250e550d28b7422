"""Errors the client raises, each with the exit code the command line uses for it.

Server failures keep the server's status code and message, so an operator sees what
tensorflow_model_server said rather than a traceback. Codes are compared by name, so this
module does not import grpc: `nst-client --help` and usage errors stay instant.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

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


def with_retries(call: Callable[[], T], retries: int) -> T:
    """`call()`, retried up to `retries` times with jittered exponential backoff (0.25 s doubling,
    at most 4 s) while it fails with a retryable ServerError; any other error is final."""
    attempt = 0
    while True:
        try:
            return call()
        except ServerError as e:
            if not e.retryable or attempt >= retries:
                raise
        time.sleep(min(0.25 * 2**attempt, 4.0) * random.uniform(0.8, 1.2))
        attempt += 1
