"""Quiet TensorFlow: its log lines are noise to a user, and some look like failures."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import TextIO


@contextlib.contextmanager
def hidden_stderr(hidden: bool) -> Iterator[TextIO]:
    """With `hidden`, what the process writes to file descriptor 2 during the block goes to a file,
    shown only if the block fails; yields a stream to the real stderr, for what the user should see
    meanwhile (a progress bar).

    TF_CPP_MIN_LOG_LEVEL does not reach every line: TensorFlow also logs through absl
    ("WARNING: All log messages before absl::InitializeLog() ...", "MLIR V1 optimization pass is
    not enabled", Grappler's loop optimizer at a first Session run), which nothing outside C++ can
    configure. The file descriptor is what catches them all.
    """
    if not hidden:
        yield sys.stderr
        return
    sys.stderr.flush()
    saved = os.dup(2)
    real = os.fdopen(os.dup(saved), "w", buffering=1)
    with tempfile.TemporaryFile() as capture, real:
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield real
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                capture.seek(0)
                sys.stderr.write(capture.read().decode(errors="replace"))
                sys.stderr.flush()


def quiet_tensorflow(verbose: bool) -> None:
    """Before TensorFlow loads: hide its start-up log lines unless `verbose`.

    They are noise here and some look like failures (`failed call to cuInit: INTERNAL` on a machine
    without a GPU). Errors still reach the user: as exceptions, not log lines. An explicit
    TF_CPP_MIN_LOG_LEVEL in the environment wins over the quiet default.
    """
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("absl", "tensorflow"):  # Python-side warnings (deprecations, absl's) of the same kind
        logging.getLogger(name).setLevel(logging.ERROR)
