"""Where a run's PNGs go: checked before the run, so that nothing a user waited for is lost at its end."""

from __future__ import annotations

import os
import pathlib


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
