"""Progress of a long stage, counted in samples as workers process them.

On a terminal: a live bar (rich). Without one (Slurm, Ray jobs, CI logs): a log line every
`log_every` seconds with done/total, rate and ETA. `--quiet`: nothing. The rate is samples done
over time elapsed, the same figure the summary reports.
"""
from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger("recaption")
_ACTIVE: list = []  # consoles of live bars, so log lines print above them


def active_console():
    """The console of the live progress bar, if one is showing."""
    return _ACTIVE[-1] if _ACTIVE else None


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Thread-safe sample counter with a bar or periodic log lines; use as a context manager."""

    def __init__(self, desc: str, total: int | None, unit: str = "samples", quiet: bool = False,
                 log_every: float = 30.0, tty: bool | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self.quiet, self.log_every = quiet, log_every
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._bar = None
        self._t0 = self._last_log = time.monotonic()

    @property
    def rate(self) -> float:
        """Samples per second since the start."""
        el = time.monotonic() - self._t0
        return self.done / el if el > 0 else 0.0

    def line(self) -> str:
        """`desc: done/total samples (pct), rate samples/s, ETA h:mm:ss`."""
        r = self.rate
        tot = f"/{self.total:,}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = (self.total - self.done) / r if self.total and r > 0 else None
        return f"{self.desc}: {self.done:,}{tot} {self.unit}{pct}, {r:,.1f} {self.unit}/s, ETA {_eta(eta)}"

    def __enter__(self):
        if not self.quiet and self.tty:
            from rich.progress import BarColumn, Progress as RP, TextColumn

            self._bar = RP(TextColumn("[bold]{task.description}"), BarColumn(),
                           TextColumn("{task.fields[text]}"), transient=False, console=_console())
            self._bar.start()
            _ACTIVE.append(self._bar.console)
            self._task = self._bar.add_task(self.desc, total=self.total, text="")
        return self

    def advance(self, n: int = 1) -> None:
        """Count n more samples done (from any thread)."""
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done, text=self._bar_text())
            elif not self.quiet and time.monotonic() - self._last_log >= self.log_every:
                self._last_log = time.monotonic()
                log.info("%s", self.line())

    def _bar_text(self) -> str:
        from rich.markup import escape

        return escape(self.line().split(": ", 1)[1])

    def set_total(self, total: int) -> None:
        """Set or correct the expected total."""
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.update(self._task, total=total, text=self._bar_text())

    def note(self, report: dict) -> None:
        """Say at once when an item failed (the summary names it again)."""
        if report.get("status") == "failed":
            log.warning("%s failed: %s", report.get("shard"), report.get("error"))

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
            _ACTIVE.remove(self._bar.console)
        elif not self.quiet and self.done:
            log.info("%s", self.line())


def _console():
    from rich.console import Console

    return Console(stderr=True)
