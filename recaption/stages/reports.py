"""What a stage reports for one work item (crosses process boundaries as a plain dict), and the
per-stage timer behind the summaries' timings."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from recaption.errors import reason_category


@dataclass
class ShardReport:
    """The outcome of one input shard in an annotate-like stage."""

    shard: str
    status: str  # done | skipped | failed
    samples: int = 0  # samples read (keyed rows)
    errors: int = 0  # samples that ended as error rows
    seconds: dict = field(default_factory=dict)
    error: str | None = None  # why the stage failed on this shard
    read_error: str | None = None  # why the shard could not be read whole (its good samples still count)
    reasons: dict = field(default_factory=dict)  # error category -> samples
    info: dict = field(default_factory=dict)  # stage-specific counts (e.g. captions matched)


def error_reasons(rows: list[dict]) -> dict:
    """Every error category among rows (numbers as `#`: `errors.reason_category`) with its count,
    most common first; all of them, so the run's summary adds up to its error count."""
    c = Counter(reason_category(r["error"] or "error") for r in rows if r["key"] is not None and r["status"] != "ok")
    return dict(c.most_common())


class Timer:
    """Accumulates seconds per named stage: `with t("caption"): ...` or `t.add("wait_input", s)`."""

    def __init__(self):
        self.s: dict[str, float] = {}

    def add(self, k: str, v: float) -> None:
        """Add seconds to a named stage."""
        self.s[k] = round(self.s.get(k, 0.0) + v, 4)

    def __call__(self, k: str):
        return _Span(self, k)


class _Span:
    def __init__(self, timer: Timer, k: str):
        self.timer, self.k = timer, k

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *a):
        self.timer.add(self.k, time.perf_counter() - self.t0)
