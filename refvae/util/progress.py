"""Progress on stderr: a bar redrawn in place on a terminal (rate, elapsed time, ETA), and when
the output is not a terminal (a log file, a pipe) one plain line every ``log_interval`` steps and
at the end, so that a long job is never silent."""
from __future__ import annotations

import sys
import time

REDRAW_S = 0.1  # a terminal bar is redrawn at most this often


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    s = int(max(seconds, 0.0))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def status(done: int, total: int, elapsed: float, unit: str) -> str:
    """``done/total (pct) rate unit/s elapsed m:ss eta m:ss``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    return (f"{done}/{total} ({100 * done / max(total, 1):.0f}%) {rate:.1f} {unit}/s "
            f"elapsed {clock(elapsed)} eta {clock(eta)}")


class Meter:
    """Progress of one job of ``total`` steps; silent when ``enabled`` is false."""

    def __init__(self, label: str, total: int, enabled: bool = True, stream=None,
                 log_interval: int = 100, unit: str = "steps"):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label, self.total, self.unit = label, total, unit
        self.log_interval = log_interval
        self.done = 0
        self.t0 = self.last_draw = time.perf_counter()

    def advance(self, steps: int = 1, note: str = "") -> None:
        self.done += steps
        if not self.enabled:
            return
        now = time.perf_counter()
        text = f"{self.label} {status(self.done, self.total, now - self.t0, self.unit)}"
        text += f" {note}" if note else ""
        if self.tty:
            if now - self.last_draw >= REDRAW_S or self.done >= self.total:
                width = 20
                filled = int(width * self.done / max(self.total, 1))
                self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                                  f"{text[len(self.label) + 1:]}\033[K")
                self.stream.flush()
                self.last_draw = now
        elif self.done // self.log_interval > (self.done - steps) // self.log_interval:
            self.stream.write(text + "\n")
            self.stream.flush()

    def line(self, text: str) -> None:
        """A line of its own (ending the bar on a terminal)."""
        if self.enabled:
            self.stream.write(("\r" if self.tty else "") + text + ("\033[K" if self.tty else "")
                              + "\n")
            self.stream.flush()
