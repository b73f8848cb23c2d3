"""The exact k-th smallest of values spread over many files, in bounded memory (radix select).

Scores become order-preserving 64-bit keys (`to_keys`). Each pass over the files answers one
`Query` per file: a sparse histogram of the next `step` key bits among the keys that share the
prefix found so far, or, once few enough keys share it, those keys themselves. The driver merges
the per-file answers (small: at most one entry per distinct digit) and narrows the prefix. A
float64 key needs at most ceil(64 / step) histogram passes; typical score columns need one
histogram and one collect. Ties, fraction 0 and 1 and a single distinct value are all exact: the
rank is counted, never estimated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

SIGN = np.uint64(1 << 63)
STEP = 20  # bits per histogram pass: a 2^20 (8 MB) merged histogram on the driver
COLLECT = 1 << 22  # collect the keys themselves once at most this many share the prefix (32 MB)


def to_keys(x: np.ndarray) -> np.ndarray:
    """uint64 keys in the order of the (finite) float64 values; -0.0 and 0.0 get the same key."""
    b = (np.asarray(x, dtype=np.float64) + 0.0).view(np.uint64)
    return np.where((b & SIGN) != 0, ~b, b | SIGN)


def from_key(k: int) -> float:
    """The float a 64-bit order-preserving key stands for."""
    k = np.uint64(k)
    b = k ^ SIGN if k & SIGN else ~k
    return float(np.array([b], dtype=np.uint64).view(np.float64)[0])


@dataclass(frozen=True)
class Query:
    """What one pass of the radix select asks each file for: the key prefix and bits to count."""
    prefix: int  # the top `bits` bits every key of interest has
    bits: int
    step: int  # > 0: histogram of the next `step` bits; 0: send the keys themselves


def answer(keys: np.ndarray, q: Query):
    """One file's part of a pass: (digits, counts) for a histogram, or the matching keys."""
    if q.bits:
        keys = keys[(keys >> np.uint64(64 - q.bits)) == np.uint64(q.prefix)]
    if q.step == 0:
        return keys
    digits = (keys >> np.uint64(64 - q.bits - q.step)) & np.uint64((1 << q.step) - 1)
    d, c = np.unique(digits, return_counts=True)
    return d.astype(np.uint32), c.astype(np.int64)


class Select:
    """Driver side of one radix select. `rank_of(N)` gives the ascending rank wanted among the N
    values (or None: no answer); it is asked after the first pass has counted them.

        while (q := s.query()) is not None:
            s.start(); [s.add(answer(keys_of(file), q)) for file in files]; s.finish()
        s.value
    """

    def __init__(self, rank_of: Callable[[int], int | None], step: int = STEP, collect: int = COLLECT):
        self.rank_of, self.step, self.collect = rank_of, step, collect
        self.n: int | None = None
        self.rank: int | None = None
        self.value: float | None = None
        self.done = False
        self._q = Query(0, 0, step)
        self._acc = None

    def query(self) -> Query | None:
        """The current pass's question, or None when the answer is known."""
        return None if self.done else self._q

    def start(self) -> None:
        """Begin a pass."""
        self._acc = np.zeros(1 << self._q.step, dtype=np.int64) if self._q.step else []

    def add(self, part) -> None:
        """Merge one file's answer to the current query."""
        if self._q.step:
            d, c = part
            np.add.at(self._acc, d.astype(np.intp), c)
        elif len(part):
            self._acc.append(part)

    def finish(self) -> None:
        """End a pass: narrow the prefix, or settle the value."""
        q, acc, self._acc = self._q, self._acc, None
        if q.step == 0:
            keys = np.concatenate(acc) if acc else np.empty(0, np.uint64)
            self._end(from_key(np.partition(keys, self.rank)[self.rank]))
            return
        if self.n is None:
            self.n = int(acc.sum())
            self.rank = self.rank_of(self.n) if self.n else None
            if self.rank is None:
                self._end(None)
                return
        below = np.cumsum(acc)
        digit = int(np.searchsorted(below, self.rank, side="right"))
        self.rank -= int(below[digit - 1]) if digit else 0
        prefix, bits = (q.prefix << q.step) | digit, q.bits + q.step
        if bits == 64:  # every key left is the same value
            self._end(from_key(prefix))
        elif acc[digit] <= self.collect:
            self._q = Query(prefix, bits, 0)
        else:
            self._q = Query(prefix, bits, min(self.step, 64 - bits))

    def _end(self, value: float | None) -> None:
        self.value, self.done = value, True
