"""Errors the client raises, each with the exit code the command line uses for it.

Server failures keep the server's status code and message, so an operator sees what
tensorflow_model_server said rather than a traceback. Codes are compared by name, so this
module does not import grpc: `nst-client --help` and usage errors stay instant.
"""

from __future__ import annotations

import random
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
        super().__init__(f"{code.name}: {self.message}")

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES.get(self.code.name, EXIT_SERVER_ERROR)


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


# Codes that say the server could not take the call now: unreachable (restarting, connection lost)
# or out of capacity (RESOURCE_EXHAUSTED: its threads or queue are full, or, from TensorFlow, memory
# ran out). Runs are pure functions of their inputs, so sending one again is safe; INVALID_ARGUMENT
# and DEADLINE_EXCEEDED would only fail again.
RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})  # grpc.StatusCode names


def with_retries(call: Callable[[], T], retries: int) -> T:
    """`call()`, retried up to `retries` times with jittered exponential backoff (0.25 s doubling,
    at most 4 s) while it fails with a RETRYABLE code; any other error is final."""
    attempt = 0
    while True:
        try:
            return call()
        except ServerError as e:
            if e.code.name not in RETRYABLE or attempt >= retries:
                raise
        time.sleep(min(0.25 * 2**attempt, 4.0) * random.uniform(0.8, 1.2))
        attempt += 1
