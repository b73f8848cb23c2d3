"""A live bar per stage (rich): items done, rate and ETA; silent with --quiet or off a terminal."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("recaption")


class Progress:
    def __init__(self, desc: str, total: int | None, unit: str = "samples", quiet: bool = False):
        self.desc, self.total, self.unit = desc, total, unit
        self.quiet = quiet or not sys.stderr.isatty()
        self._p = None

    def __enter__(self):
        if not self.quiet:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RP, TaskProgressColumn,
                                       TextColumn, TimeRemainingColumn, TransferSpeedColumn)

            class _Rate(TransferSpeedColumn):
                def render(s, task):  # samples/s, not bytes/s
                    from rich.text import Text

                    return Text(f"{task.speed or 0:,.1f} {self.unit}/s", style="progress.data.speed")

            self._p = RP(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TaskProgressColumn(), _Rate(), TimeRemainingColumn(), transient=False)
            self._p.start()
            self._task = self._p.add_task(self.desc, total=self.total)
        return self

    def advance(self, n: int = 1):
        if self._p is not None:
            self._p.advance(self._task, n)

    def set_total(self, total: int):
        self.total = total
        if self._p is not None:
            self._p.update(self._task, total=total)

    def note(self, report: dict):
        if report.get("status") == "failed":
            log.warning("shard %s failed: %s", report.get("shard"), report.get("error"))

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.stop()
