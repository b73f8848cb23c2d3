"""Radix select: the exact DataComp threshold over values split across many files, checked against
a plain numpy sort (ties, missing values, fraction 0 and 1, deep refinements)."""
import numpy as np
import pytest

from recaption.scoring.blend import kept_rank
from recaption.scoring.select import Select, answer, from_key, to_keys
from tests.helpers import fraction_threshold


def run(parts: list[np.ndarray], rank_of, **kw) -> tuple[float | None, int]:
    """Drive a Select over several 'files'; returns the value and the number of passes."""
    s = Select(rank_of, **kw)
    keys = [to_keys(p[np.isfinite(p)]) for p in parts]
    passes = 0
    while (q := s.query()) is not None:
        s.start()
        for k in keys:
            s.add(answer(k, q))
        s.finish()
        passes += 1
    return s.value, passes


def reference(values: np.ndarray, fraction: float) -> float:
    """DataComp's get_threshold, literally: sort high to low, take the n-th."""
    v = np.sort(values[np.isfinite(values)])[::-1]
    return float(v[min(int(len(v) * fraction), len(v) - 1)])


def test_keys_keep_the_order_of_floats():
    x = np.array([-np.inf, -3.5, -1e-300, -0.0, 0.0, 1e-300, 0.25, 0.2500001, 7.0, np.inf])
    k = to_keys(x)
    assert (np.diff(k.astype(object)) >= 0).all()
    assert k[3] == k[4]  # -0.0 and 0.0 are one value
    assert [from_key(int(v)) for v in k] == [float(v) + 0.0 for v in x]


@pytest.mark.parametrize("fraction", [0.0, 1e-7, 0.1, 0.3, 0.5, 0.999999, 1.0])
def test_millions_of_tied_scores_match_a_sort(fraction):
    rng = np.random.default_rng(7)
    # float32 CLIP-like scores rounded to 3 decimals: about 400 distinct values over 3M rows
    x = np.round(rng.normal(0.3, 0.05, 3_000_000), 3).astype(np.float32).astype(np.float64)
    x[rng.random(x.size) < 0.02] = np.nan  # missing scores are left out of N
    parts = np.array_split(x, 37)
    n = int(np.isfinite(x).sum())
    got, passes = run(parts, lambda N: kept_rank(N, fraction))
    assert got == reference(x, fraction)
    assert passes <= 3
    assert n > 0


def test_blend_like_float64_scores_match_a_sort():
    rng = np.random.default_rng(3)
    x = rng.random(2_000_000) * 0.5 + rng.random(2_000_000) * 0.5  # float64, nearly all distinct
    for f in (0.2, 0.7):
        assert run(np.array_split(x, 11), lambda N, f=f: kept_rank(N, f))[0] == reference(x, f)


def test_refinement_down_to_the_last_bit_with_tiny_passes():
    rng = np.random.default_rng(1)
    x = np.concatenate([np.full(5000, 0.3), rng.normal(0, 1, 5000), [-0.0, 0.0, -2.0]])
    for r in (0, 1, 4000, 7000, len(x) - 1):
        got, passes = run(np.array_split(x, 5), lambda N, r=r: r, step=4, collect=3)
        assert got == float(np.sort(x)[r]) + 0.0
        assert passes >= 4  # forced through several histogram levels


def test_a_single_value_and_no_value():
    assert run([np.full(10, 0.5)], lambda N: 3)[0] == 0.5
    assert run([np.full(10, np.nan), np.empty(0)], lambda N: 0)[0] is None
    assert run([np.array([0.1, np.nan, 0.3, 0.2])], lambda N: 1)[0] == 0.2


def test_in_memory_fraction_threshold_is_the_same_rule():
    rng = np.random.default_rng(5)
    x = np.round(rng.random(10_001), 2)
    for f in (0.0, 0.25, 1.0):
        assert fraction_threshold(list(x) + [None, float("nan")], f) == reference(x, f)
