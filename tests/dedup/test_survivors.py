"""The first sample in order survives; every other names the earliest kept sample it matches."""
from __future__ import annotations

import numpy as np
import pytest

from recaption.dedup import survivors
from recaption.dedup.survivors import first_kept


def one_at_a_time(rank, a, b, value):
    """The rule as its docstring states it, sample by sample in order."""
    n = len(rank)
    nbrs = {i: [] for i in range(n)}
    for x, y, v in zip(a, b, value):
        if x != y:
            nbrs[x].append((y, v))
            nbrs[y].append((x, v))
    kept, partner, val = set(), np.full(n, -1), np.zeros(n)
    for v in sorted(range(n), key=lambda i: rank[i]):
        earlier = [(rank[u], u, w) for u, w in nbrs[v] if rank[u] < rank[v] and u in kept]
        if earlier:
            _, u, w = min(earlier)
            partner[v], val[v] = u, w
        else:
            kept.add(v)
    return partner, val


@pytest.mark.parametrize("seed", range(8))
def test_rounds_give_the_one_at_a_time_answer(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    m = int(rng.integers(0, 3 * n))
    pairs = np.unique(np.sort(rng.integers(0, n, (m, 2)), axis=1), axis=0)  # each pair once
    a, b = pairs[:, 0], pairs[:, 1]
    value = rng.random(len(a))
    rank = rng.permutation(n)
    partner, val = first_kept(rank, a, b, value)
    want_p, want_v = one_at_a_time(rank, a, b, value)
    assert (partner == want_p).all()
    assert np.allclose(val, want_v)
    dropped = partner >= 0
    assert (partner[dropped] != np.flatnonzero(dropped)).all()  # never its own partner
    assert (partner[partner[dropped]] == -1).all()  # every partner is kept
    assert (rank[partner[dropped]] < rank[dropped]).all()  # and comes first


def test_a_chain_longer_than_the_rounds_is_settled_the_same(monkeypatch):
    monkeypatch.setattr(survivors, "ROUNDS", 3)
    n = 50
    a, b = np.arange(n - 1), np.arange(1, n)  # 0-1-2-...: kept, dropped, kept, dropped, ...
    partner, _ = first_kept(np.arange(n), a, b, np.ones(n - 1))
    assert (partner[::2] == -1).all()
    assert (partner[1::2] == np.arange(0, n - 1, 2)).all()


def test_no_pairs_keeps_everything():
    partner, _ = first_kept(np.arange(4), [], [], np.zeros(0))
    assert (partner == -1).all()
