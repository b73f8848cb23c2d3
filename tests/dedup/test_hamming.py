"""Pairs within Hamming distance k: every table layout against an all-pairs check."""
from __future__ import annotations

import numpy as np
import pytest

from recaption.dedup import hamming
from recaption.scoring.fingerprint import popcount


def clustered(rng, n: int, flips: int = 3) -> np.ndarray:
    """Hashes around a few centres, each with up to `flips` bits flipped: many near pairs."""
    centres = rng.integers(0, 2 ** 63, size=max(1, n // 20), dtype=np.uint64) << np.uint64(1)
    x = centres[rng.integers(0, len(centres), n)] | rng.integers(0, 2, n, dtype=np.uint64)
    for _ in range(flips):
        flip = rng.random(n) < 0.5
        x[flip] ^= np.uint64(1) << rng.integers(0, 64, int(flip.sum())).astype(np.uint64)
    return x


def all_pairs(x, k, y=None) -> set:
    other = x if y is None else y
    d = popcount(x[:, None] ^ other[None, :])
    ok = d <= k
    if y is None:
        ok &= np.triu(np.ones_like(ok, dtype=bool), 1)
    return set(zip(*(v.tolist() for v in np.nonzero(ok))))


def layout(monkeypatch, s):
    monkeypatch.setattr(hamming, "_plan", lambda nx, ny, k, within: (k + s, s))


@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("k", [0, 2, 5, 9])
def test_every_layout_finds_exactly_the_pairs_within_k(monkeypatch, s, k):
    rng = np.random.default_rng(k * 10 + s)
    x = clustered(rng, 1500)
    y = x[rng.integers(0, len(x), 300)]  # copies of x, a third with a bit flipped
    flip = rng.random(300) < 0.3
    y[flip] ^= np.uint64(1) << rng.integers(0, 64, int(flip.sum())).astype(np.uint64)
    expected_own, expected_cross = all_pairs(x, k), all_pairs(x, k, y)
    assert expected_own and expected_cross  # the data has pairs to find
    layout(monkeypatch, s)
    own, cross = hamming.join(x, k, y)
    assert set(zip(own[0].tolist(), own[1].tolist())) == expected_own
    assert set(zip(cross[0].tolist(), cross[1].tolist())) == expected_cross
    assert (own[2] == popcount(x[own[0]] ^ x[own[1]])).all()
    assert (cross[2] == popcount(x[cross[0]] ^ y[cross[1]])).all()
    assert (own[0] < own[1]).all()


def test_the_chosen_plan_and_all_against_all_agree():
    rng = np.random.default_rng(7)
    x = clustered(rng, 3000)
    for k in (0, 1, 2, 4, 12):
        a, b, _ = hamming.join(x, k)[0]
        assert set(zip(a.tolist(), b.tolist())) == all_pairs(x, k)


def test_a_run_larger_than_a_chunk_is_walked_in_blocks(monkeypatch):
    monkeypatch.setattr(hamming, "CHUNK", 1000)
    layout(monkeypatch, 2)
    x = np.full(400, 12345, dtype=np.uint64)
    x[::3] ^= np.uint64(1 << 40)  # one key for the table of the low blocks: a run of 400 rows
    a, b, _ = hamming.join(x, 1)[0]
    assert len(a) == 400 * 399 // 2
    assert set(zip(a.tolist(), b.tolist())) == all_pairs(x, 1)


def test_the_pool_plan_for_ten_million_rows_is_tables():
    assert hamming._plan(10_000_000, 10_000_000, 2, True) == (4, 2)


def test_empty_sides_and_negative_k():
    x = np.arange(10, dtype=np.uint64)
    assert all(len(v) == 0 for v in hamming.join(x[:0], 3)[0])
    assert all(len(v) == 0 for v in hamming.join(x, -1)[0])
    own, cross = hamming.join(x, 3, x[:0])
    assert len(own[0]) and not len(cross[0])
