"""The progress bar of nst-stylize and nst-client: a set-up phase, then steps, loss and time left.

It is fed by the chunk loop's progress callback (nst_client.chunked.Progress). The bar starts when
the first chunk does, so its rate and time left leave out the set-up (reading and decoding the
images, loading the model: the command lines say when that starts); each tick shows the loss of the
step just reached.
"""

from __future__ import annotations

import math
import sys
from typing import TextIO

import tqdm


class ProgressBar:
    def __init__(self, disable: bool = False, file: TextIO | None = None):
        self.disable = disable
        self.file = file or sys.stderr
        self.bar: tqdm.tqdm | None = None

    def __call__(self, done: int, total: int, loss: float) -> None:
        if self.disable:
            return
        if self.bar is None:
            self.bar = tqdm.tqdm(total=total, unit="step", dynamic_ncols=True, file=self.file, initial=done)
        if math.isfinite(loss):
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        self.bar.update(done - self.bar.n)  # redraws, with the postfix just set

    def waiting(self, seconds: float) -> None:
        """Say that the run waits for a free replica, and for how long so far (NSTClient.run's on_wait)."""
        if self.bar is not None:  # the next step's tick shows the loss again
            self.bar.set_postfix_str(f"waiting for a free replica: {seconds:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # draws the final line once
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
