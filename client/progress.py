"""Progress on a terminal or in a log: a redrawn bar (stage and fraction) on a TTY, plain lines otherwise.

Used by ``Job.wait(progress=True)`` and by the ``specprune`` command; writes to stderr by default so
that stdout stays clean for results.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 28
TTY_REDRAW_SECONDS = 0.1
PLAIN_LINE_SECONDS = 5.0


class ProgressDisplay:
    """Shows ``(stage, fraction)`` updates; ``close()`` ends the bar's line."""

    def __init__(self, stream: TextIO | None = None, *, label: str = "", tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label = f"{label} " if label else ""
        self.tty = _is_tty(self.stream) if tty is None else tty
        self._stage: str | None = None
        self._fraction = 0.0
        self._shown_at = 0.0
        self._started = time.monotonic()
        self._bar_open = False
        self._completed: set[str] = set()

    def update(self, stage: str, fraction: float) -> None:
        """Record progress; draws it when due (always on a stage change)."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        changed = stage != self._stage
        self._stage, self._fraction = stage, fraction
        now = time.monotonic()
        if self.tty:
            if changed or now - self._shown_at >= TTY_REDRAW_SECONDS or fraction >= 1.0:
                self._draw_bar(now)
            return
        finished = fraction >= 1.0 and stage not in self._completed
        if changed or finished or now - self._shown_at >= PLAIN_LINE_SECONDS:
            if finished:
                self._completed.add(stage)
            self._shown_at = now
            self._write(f"{self.label}{stage} {fraction * 100:.0f}%\n")

    def message(self, text: str) -> None:
        """A line of text (on a TTY, above the bar)."""
        if self._bar_open:
            self._write("\r\x1b[K")
        self._write(f"{text}\n")
        if self._bar_open and self._stage is not None:
            self._draw_bar(time.monotonic())

    def close(self) -> None:
        """End the bar's line (nothing to do for plain lines)."""
        if self._bar_open:
            self._draw_bar(time.monotonic())
            self._write("\n")
            self._bar_open = False

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _draw_bar(self, now: float) -> None:
        filled = round(self._fraction * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        elapsed = _clock(now - self._started)
        line = f"{self.label}{self._stage or '':<14} [{bar}] {self._fraction * 100:5.1f}%  {elapsed}"
        self._write(f"\r\x1b[K{line}")
        self._shown_at = now
        self._bar_open = True

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:d}:{secs:02d}"
