"""Who survives a set of duplicate pairs: the first in order, and each other names its survivor.

The rule, for samples in a fixed order (input order, or best score first): a sample is kept
unless a sample before it that is kept matches it; a dropped sample's partner is the earliest kept
sample before it that matches it. So every partner is kept (by this rule), no two kept samples
match, and the outcome depends only on the order, never on how the pairs were found. Exact
duplicates form groups whose first member survives; near matches need not be transitive (a may
match b and b match c while a and c differ), and the rule above settles such chains the same way
every time.

It is computed columnar, in rounds over the pair list: a sample whose earlier matches are all
dropped is kept, a sample with a kept earlier match is dropped. Each round decides at least the
earliest undecided sample and real chains are short; past ROUNDS rounds the rest is settled one
sample at a time (only those left undecided).
"""
from __future__ import annotations

import numpy as np

ROUNDS = 64
_OPEN, _KEPT, _DROPPED = 0, 1, 2


def first_kept(rank: np.ndarray, a: np.ndarray, b: np.ndarray, value: np.ndarray):
    """Samples 0..n-1 with distinct `rank` (lower comes first) and matching pairs (a[i], b[i]) of
    `value`, each pair listed once -> (partner int64 [n]: -1 where kept, value of the pair with
    the partner [n])."""
    rank = np.asarray(rank)
    n = len(rank)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    value = np.asarray(value)
    keep = a != b  # a sample never matches itself
    a, b, value = a[keep], b[keep], value[keep]
    swap = rank[a] > rank[b]
    a, b = np.where(swap, b, a), np.where(swap, a, b)  # a: the earlier of the two
    state = np.full(n, _OPEN, dtype=np.int8)
    state[np.bincount(b, minlength=n) == 0] = _KEPT
    for _ in range(ROUNDS):
        if not (state == _OPEN).any():
            break
        hit = state[a] == _KEPT
        state[b[hit & (state[b] == _OPEN)]] = _DROPPED
        blocking = np.bincount(b[state[a] != _DROPPED], minlength=n)
        state[(state == _OPEN) & (blocking == 0)] = _KEPT
    if (state == _OPEN).any():
        _settle(state, rank, a, b)
    partner = np.full(n, -1, dtype=np.int64)
    out_value = np.zeros(n, dtype=value.dtype if len(value) else np.float64)
    hit = (state[a] == _KEPT) & (state[b] == _DROPPED)
    a, b, value = a[hit], b[hit], value[hit]
    order = np.lexsort((rank[a], b))  # per dropped sample, its earliest kept match first
    first = order[np.r_[True, b[order][1:] != b[order][:-1]]] if len(order) else order
    partner[b[first]] = a[first]
    out_value[b[first]] = value[first]
    return partner, out_value


def _settle(state: np.ndarray, rank: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Decide the samples the rounds left open, one at a time in order (long chains only)."""
    order = np.argsort(b, kind="stable")
    bs, as_ = b[order], a[order]
    starts = np.searchsorted(bs, np.arange(len(state)))
    ends = np.searchsorted(bs, np.arange(len(state)), side="right")
    open_ = np.flatnonzero(state == _OPEN)
    for v in open_[np.argsort(rank[open_], kind="stable")]:
        earlier = as_[starts[v]:ends[v]]
        state[v] = _DROPPED if (state[earlier] == _KEPT).any() else _KEPT
