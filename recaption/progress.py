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
    """Thread-safe sample counter with a bar or periodic log lines; use as a context manager.

    The total is known up front where every item's count is (`counts`: annotation row counts,
    img2dataset stats files); otherwise it is estimated from the items finished so far (shown as
    `~N`), and a run that finishes every item ends at its own count: a finished run reads 100%."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "samples", quiet: bool = False,
                 log_every: float = 30.0, tty: bool | None = None, counts: list | None = None):
        self.desc, self.unit = desc, unit
        self.counts = list(counts) if counts is not None else None
        self._actual: dict[int, int] = {}  # item index -> samples it held, once finished
        self.total = total if counts is None else self._expected()
        self.estimated = False
        self.done = 0
        self.status = ""  # what the workers do before their first samples (loading models)
        self.quiet, self.log_every = quiet, log_every
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._bar = None
        self._logged: str | None = None  # the last line logged, so the final one is not logged twice
        self._t0 = self._last_log = time.monotonic()

    @property
    def rate(self) -> float:
        """Samples per second since the start."""
        el = time.monotonic() - self._t0
        return self.done / el if el > 0 else 0.0

    def line(self) -> str:
        """`desc: done/total samples (pct), rate samples/s, ETA h:mm:ss` (`~total` while estimated)."""
        r = self.rate
        tot = f"/{'~' if self.estimated else ''}{self.total:,}" if self.total else ""
        pct = f" ({min(100, 100 * self.done / self.total):.0f}%)" if self.total else ""
        eta = max(0, self.total - self.done) / r if self.total and r > 0 else None
        return f"{self.desc}: {self.done:,}{tot} {self.unit}{pct}, {r:,.1f} {self.unit}/s, ETA {_eta(eta)}"

    def __enter__(self):
        if not self.quiet and self.tty:
            from rich.progress import BarColumn, Progress as RP, TextColumn

            self._bar = RP(TextColumn("[bold]{task.description}"), BarColumn(),
                           TextColumn("{task.fields[text]}"), transient=False, console=_console())
            self._bar.start()
            _ACTIVE.append(self._bar.console)
            self._task = self._bar.add_task(self.desc, total=self.total, text=self._bar_text())
        return self

    def advance(self, n: int | str = 1) -> None:
        """Count n more samples done (from any thread); a text instead says what the workers are
        doing before their samples come (`loading models`)."""
        if isinstance(n, str):
            return self.say(n)
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done, text=self._bar_text())
            elif not self.quiet and time.monotonic() - self._last_log >= self.log_every:
                self._log()

    def say(self, status: str) -> None:
        """Show what the workers are doing until their samples come (each text logged once)."""
        with self._lock:
            if status == self.status:
                return
            self.status = status
            if self._bar is not None:
                self._bar.update(self._task, text=self._bar_text())
            elif not self.quiet:
                log.info("%s: %s...", self.desc, status)

    def _log(self) -> None:
        self._last_log = time.monotonic()
        line = self.line()
        if line.split(",", 1)[0] != (self._logged or "").split(",", 1)[0]:  # same count: said already
            log.info("%s", line)
        self._logged = line

    def _bar_text(self) -> str:
        from rich.markup import escape

        if not self.done and self.status:
            return escape(f"{self.status}...")
        return escape(self.line().split(": ", 1)[1])

    def set_total(self, total: int) -> None:
        """Set or correct the expected total."""
        with self._lock:
            self.total, self.estimated = total, False
            self._update_total()

    def _update_total(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=self.total, text=self._bar_text())

    def _expected(self) -> int | None:
        """The total from the items' counts: a finished item's own, a known count, else the mean of
        the finished ones (None before any is)."""
        exp = [self._actual.get(i, c) for i, c in enumerate(self.counts)]
        known = [e for e in exp if e is not None]
        missing = len(exp) - len(known)
        self.estimated = bool(missing)
        if not missing:
            return sum(known)
        if not self._actual:
            return None
        mean = sum(self._actual.values()) / len(self._actual)
        return int(round(sum(known) + mean * missing))

    def finished(self, i: int, report: dict) -> None:
        """Item i is done: its sample count replaces the expected one, and the total follows."""
        self.note(report)
        if self.counts is None or not 0 <= i < len(self.counts):
            return
        with self._lock:
            self._actual[i] = int(report.get("samples") or 0)
            self.total = self._expected()
            self._update_total()

    def note(self, report: dict) -> None:
        """Say at once when an item failed (the summary names it again)."""
        if report.get("status") == "failed":
            log.warning("%s failed: %s", report.get("shard"), report.get("error"))

    def __exit__(self, *exc):
        if self.counts is not None and exc[0] is None and len(self._actual) == len(self.counts) and self.done:
            self.total, self.estimated = self.done, False  # samples still in flight when the last item reported
            self._update_total()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, text=self._bar_text())
            self._bar.stop()
            _ACTIVE.remove(self._bar.console)
        elif not self.quiet and self.done:
            self._log()


def _console():
    from rich.console import Console

    return Console(stderr=True)
