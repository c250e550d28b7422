"""Quiet TensorFlow: its log lines are noise to a user, and some look like failures."""

from __future__ import annotations

import contextlib
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
