"""A minimal progress bar on a text stream (stderr), drawn only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``label [#####.....] done/total unit  elapsed`` redrawn in place; silent when disabled.

    Parameters
    ----------
    label : str
        Text before the bar.
    total : int
        Number of steps (>= 1).
    unit : str
        Name of a step.
    stream : file-like, optional
        Where to draw (default ``sys.stderr``).
    enabled : bool or None
        ``None``: draw only when ``stream`` is a TTY.
    width : int
        Bar width in characters.
    """

    def __init__(self, label: str, total: int, unit: str = "", stream: TextIO | None = None,
                 enabled: bool | None = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.label = label
        self.total = max(1, int(total))
        self.unit = unit
        self.width = width
        self.done = 0
        self.start = time.perf_counter()
        self._drawn = False

    def update(self, done: int) -> None:
        """Set the number of finished steps and redraw."""
        self.done = min(max(0, int(done)), self.total)
        if not self.enabled:
            return
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {self.unit} {elapsed:.1f} s")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the line the bar was drawn on."""
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
