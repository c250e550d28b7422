"""Where a run's PNGs go: checked before the run, written whole or not at all, and never lost at its end.

The one home for this, used by nst-client and nst-stylize alike: the final image (and the one Ctrl-C
leaves) falls back to the system's temporary folder, then the current folder, when its own path
cannot take it; a checkpoint that cannot be written is a warning and the run goes on.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import tempfile
from collections.abc import Callable
from typing import NamedTuple


def checkpoint_path(output: pathlib.Path, steps: int) -> pathlib.Path:
    """Where the image after `steps` steps goes: out.png -> out_0100.png."""
    return output.with_name(f"{output.stem}_{steps:04d}{output.suffix}")


def prepare_output(output: pathlib.Path) -> str | None:
    """Make the output's folder and check it can be written; None if fine, else why not (one line)."""
    if output.suffix.lower() != ".png":
        return f"--output must end in .png: the model returns a PNG; got {output}"
    if output.is_dir():
        return f"--output {output} is a folder; give a file name ending in .png"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create the folder {output.parent} for --output: {e.strerror}"
    if not os.access(output.parent, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        return f"cannot write {output}: permission denied"
    return None


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def write_png(path: pathlib.Path, png: bytes) -> None:
    """Write `png` to `path` whole or not at all: into a temporary file beside it, then renamed onto it, so
    that a full disk or a kill mid-write leaves the previous file (or none), never a truncated one. A symbolic
    link is followed, as an ordinary write would."""
    path = pathlib.Path(os.path.realpath(path))
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(png)
            file.flush()
            os.fsync(file.fileno())  # a full disk may only say so here
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def fallback_folders() -> list[pathlib.Path]:
    """Where an image goes when its own path cannot take it, in order: the system's temporary folder, then
    the current folder."""
    return [pathlib.Path(tempfile.gettempdir()), pathlib.Path.cwd()]


class Saved(NamedTuple):
    """Where an image went: `path` (None if nowhere would take it) and, when that is not where it was asked
    to go, `problem`: why not, one line."""

    path: pathlib.Path | None
    problem: str | None = None

    def outcome(self, what: str) -> str:
        """One line for the user: 'wrote WHAT to PATH', else what failed and where WHAT is, or that it is lost."""
        if self.problem is None:
            return f"wrote {what} to {self.path}"
        if self.path is None:
            return f"{self.problem}; {what} is lost"
        return f"{self.problem}; wrote {what} to {self.path} instead"


def save(path: pathlib.Path, png: bytes) -> Saved:
    """Write `png` to `path`; where that fails, to a new file named after it in each of fallback_folders()
    in turn, so that an image a run has finished is not lost to a full disk or a bad path."""
    try:
        write_png(path, png)
        return Saved(path)
    except OSError as e:
        problem = f"cannot write {path}: {_reason(e)}"
    failures = []
    for folder in fallback_folders():
        try:
            fd, name = tempfile.mkstemp(prefix=f"{path.stem}-", suffix=path.suffix, dir=folder)
        except OSError as e:
            failures.append(f"{folder} ({_reason(e)})")
            continue
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(png)
                file.flush()
                os.fsync(file.fileno())
            return Saved(pathlib.Path(name), problem)
        except OSError as e:
            pathlib.Path(name).unlink(missing_ok=True)
            failures.append(f"{folder} ({_reason(e)})")
    return Saved(None, f"{problem}, nor in {' or '.join(failures)}")


class Checkpoints:
    """The chunk loop's checkpoint callback: writes OUTPUT_0100.png and so on. One that cannot be written
    costs a warning line, the first time and again only when the reason changes, and the run goes on:
    only the final output decides the exit code."""

    def __init__(self, output: pathlib.Path, warn: Callable[[str], None]):
        self.output = output
        self.warn = warn
        self._last_reason: str | None = None

    def __call__(self, steps: int, png: bytes) -> None:
        path = checkpoint_path(self.output, steps)
        try:
            write_png(path, png)
        except OSError as e:
            if _reason(e) != self._last_reason:
                self._last_reason = _reason(e)
                self.warn(f"cannot write the checkpoint {path}: {_reason(e)}; the run goes on")
