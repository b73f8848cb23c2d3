"""Every pair of 64-bit hashes within Hamming distance k, exactly, columnar.

Split the 64 bits into m = k + s blocks. Two hashes at most k bits apart differ in at most k
blocks, so at least s blocks are identical: every such pair shares its key in at least one of the
C(m, s) tables keyed on s of the blocks (the permuted tables of Manku, Jain and Das Sarma,
"Detecting near-duplicates for web crawling", WWW 2007). Each table is one sort of (key, id)
packed in a uint64 per side; rows sharing a key are candidates, kept when their real distance is
at most k. Keys wider than 32 bits are folded to 32 by a multiplicative hash: a fold only adds
candidates, which the distance check removes, so the result stays exact. s is chosen per call from
the sizes (fewer, wider tables against more candidates); small inputs are compared all against all.

Memory: one uint64 buffer as long as the input, allocated once and reused by every table, and
candidates in chunks of CHUNK.
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from recaption.scoring.fingerprint import popcount

CHUNK = 1 << 22  # candidate pairs materialised at once (about 100 MB of temporaries)
_LOW = np.uint64(0xFFFFFFFF)
_FOLD = np.uint64(0x9E3779B97F4A7C15)
_32 = np.uint64(32)

Pairs = tuple  # (i int64, j int64, distance uint8), sorted by (i, j), unique


def join(x: np.ndarray, k: int, y: np.ndarray | None = None, *, within: bool = True) -> tuple[Pairs, Pairs]:
    """Pairs within `x` (i < j; empty unless `within`) and pairs of x against y (empty without
    `y`), in one pass over the tables: each table sorts x and y together once."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    y = np.zeros(0, np.uint64) if y is None else np.ascontiguousarray(y, dtype=np.uint64)
    nx, ny = len(x), len(y)
    if nx + ny >= 1 << 32:
        raise ValueError("hamming.join takes fewer than 2**32 hashes")
    k = int(k)
    if k < 0 or not nx:
        return _empty(), _empty()
    plan = _plan(nx, ny, k, within)
    if plan is None:
        return (_brute(x, k, None) if within else _empty()), (_brute(x, k, y) if ny else _empty())
    m, s = plan
    blocks = _blocks(m)
    buf = _Buffers(nx, ny)
    own, cross = [], []
    for chosen in combinations(range(m), s):
        buf.sort_keys(x, y, [blocks[c] for c in chosen])
        a, b = _runs(buf, x, y, k, within)
        own.append(a)
        cross.append(b)
    return _unique(own), _unique(cross)


def _plan(nx: int, ny: int, k: int, within: bool):
    """(m, s) of the cheapest exact table layout, or None when all-against-all is cheaper."""
    pairs = (nx * (nx - 1) / 2 if within else 0) + nx * ny
    rows = nx + ny
    best, best_cost = None, pairs * 1.0  # all against all: about a nanosecond a pair
    for s in (1, 2, 3):
        m = k + s
        if m > 64:
            break
        bits = min(32, sum(b - a for a, b in _blocks(m)[:s]))
        every = rows * (rows - 1) / 2  # candidates come from every side's pairs, then are sorted out
        cost = math.comb(m, s) * (rows * 30.0 + every / 2.0 ** bits * 40.0)  # ns: a sorted row, a candidate
        if cost < best_cost:
            best, best_cost = (m, s), cost
    return best


def _blocks(m: int) -> list[tuple[int, int]]:
    """m bit ranges covering 0..63, sizes differing by at most one."""
    edges = [round(i * 64 / m) for i in range(m + 1)]
    return [(edges[i], edges[i + 1]) for i in range(m)]


class _Buffers:
    """x's and y's (key << 32 | id) for one table, sorted, ids of y after x's: one uint64 a hash,
    allocated once and reused by every table (keys are computed a slice at a time). Fresh memory
    is slow to fault in on some hosts, and reuse bounds the peak too."""

    SLICE = 1 << 20

    def __init__(self, nx: int, ny: int):
        self.nx = nx
        self.packed = np.empty(nx + ny, dtype=np.uint64)

    def sort_keys(self, x: np.ndarray, y: np.ndarray, blocks) -> None:
        """packed <- (key of each hash on these blocks) << 32 | id, sorted."""
        for h, offset in ((x, 0), (y, self.nx)):
            for s in range(0, len(h), self.SLICE):
                part = h[s:s + self.SLICE]
                out = self.packed[offset + s:offset + s + len(part)]
                _key_into(part, blocks, out)
                np.left_shift(out, _32, out=out)
                np.bitwise_or(out, np.arange(offset + s, offset + s + len(part), dtype=np.uint64), out=out)
        self.packed.sort()

    def keys(self) -> np.ndarray:
        """The sorted keys (a strided view of the high halves)."""
        return self.packed.view(np.uint32)[1::2]

    def order(self) -> np.ndarray:
        """The ids in key order (a strided view of the low halves)."""
        return self.packed.view(np.uint32)[0::2]


def _key_into(h: np.ndarray, blocks, out: np.ndarray) -> None:
    """out <- the chosen blocks' bits of h side by side, folded to 32 bits when wider."""
    width = 0
    for lo, hi in blocks:
        n = hi - lo
        bits = (h >> np.uint64(lo)) & np.uint64((1 << n) - 1)
        if width:
            np.left_shift(out, np.uint64(n), out=out)
            np.bitwise_or(out, bits, out=out)
        else:
            out[...] = bits
        width += n
    if width > 32:
        np.multiply(out, _FOLD, out=out)
        np.right_shift(out, _32, out=out)


def _runs(buf: _Buffers, x: np.ndarray, y: np.ndarray, k: int, within: bool) -> tuple[Pairs, Pairs]:
    """The pairs sharing a key in this table, checked: (within x, x against y)."""
    keys = buf.keys()
    same = keys[1:] == keys[:-1]
    if not same.any():
        return _empty(), _empty()
    edge = np.flatnonzero(np.diff(np.concatenate(([False], same, [False])).astype(np.int8)))
    starts, lengths = edge[0::2], edge[1::2] - edge[0::2] + 1  # runs of one key, two rows or more
    order, nx = buf.order(), buf.nx
    own, cross = [], []
    for i, j in _run_pairs(starts, lengths):
        a, b = order[i].astype(np.int64), order[j].astype(np.int64)
        a, b = np.minimum(a, b), np.maximum(a, b)  # an id of x (< nx) comes first
        if within:
            w = b < nx
            d = popcount(x[a[w]] ^ x[b[w]])
            keep = d <= k
            own.append((a[w][keep], b[w][keep], d[keep]))
        c = (a < nx) & (b >= nx)
        if c.any():
            ac, bc = a[c], b[c] - nx
            d = popcount(x[ac] ^ y[bc])
            keep = d <= k
            cross.append((ac[keep], bc[keep], d[keep]))
    return _concat(own), _concat(cross)


def _run_pairs(starts: np.ndarray, lengths: np.ndarray):
    """Yield (i, j) position arrays, i < j inside each run, about CHUNK pairs at a time."""
    counts = lengths * (lengths - 1) // 2
    cum = np.cumsum(counts)
    lo = 0
    while lo < len(starts):
        if counts[lo] > CHUNK:  # one run larger than a chunk: a block of its rows at a time
            s, n = int(starts[lo]), int(lengths[lo])
            step = max(1, CHUNK // n)
            for a in range(0, n - 1, step):
                rows = np.arange(s + a, s + min(a + step, n - 1))
                yield _expand(rows, s + n - 1 - rows)
            lo += 1
            continue
        base = cum[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(cum, base + CHUNK, side="right")))
        st, ln = starts[lo:hi], lengths[lo:hi]
        pos = np.repeat(st, ln) + _ramp(ln)
        yield _expand(pos, np.repeat(st + ln, ln) - pos - 1)
        lo = hi


def _brute(x: np.ndarray, k: int, y: np.ndarray | None) -> Pairs:
    other = x if y is None else y
    if not len(other):
        return _empty()
    out = []
    step = max(1, CHUNK // len(other))
    for s in range(0, len(x), step):
        d = popcount(x[s:s + step, None] ^ other[None, :])
        ok = d <= k
        if y is None:
            ok &= np.arange(s, s + len(d))[:, None] < np.arange(len(other))[None, :]
        i, j = np.nonzero(ok)
        out.append((i.astype(np.int64) + s, j.astype(np.int64), d[i, j]))
    return _unique(out)


def _expand(rows: np.ndarray, counts: np.ndarray):
    """Each row r paired with the `counts[r]` positions right after it."""
    i = np.repeat(rows, counts)
    return i, i + 1 + _ramp(counts)


def _ramp(counts: np.ndarray) -> np.ndarray:
    """0, 1, .., c0-1, 0, 1, .., c1-1, ...: each element's offset inside its group."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


def _unique(parts) -> Pairs:
    a, b, d = _concat(parts if isinstance(parts, list) else [parts])
    if not len(a):
        return a, b, d
    key = (a.astype(np.uint64) << _32) | b.astype(np.uint64)
    key, first = np.unique(key, return_index=True)  # sorted by (i, j); one row per pair
    return (key >> _32).astype(np.int64), (key & _LOW).astype(np.int64), d[first]


def _concat(parts) -> Pairs:
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return _empty()
    return tuple(np.concatenate([p[n] for p in parts]) for n in range(3))


def _empty() -> Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
