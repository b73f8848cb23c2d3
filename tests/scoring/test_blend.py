import pytest

from recaption.scoring.blend import MinMax, blend
from tests.helpers import fraction_threshold


def test_minmax_and_blend():
    s, c = MinMax.of([0.2, 0.4, None, 0.6]), MinMax.of([0.1, 0.3])
    assert (s.lo, s.hi) == (0.2, 0.6)
    assert s(0.4) == pytest.approx(0.5) and s(None) is None
    assert blend(0.6, 0.1, s, c, 0.5) == pytest.approx(0.5)
    assert blend(0.6, 0.3, s, c, 0.25) == pytest.approx(1.0)
    assert blend(None, 0.3, s, c) is None


def test_constant_column_normalises_to_zero():
    m = MinMax.of([0.3, 0.3])
    assert m(0.3) == 0.0
    assert MinMax.of([None])(0.3) is None


def test_fraction_threshold_datacomp_rule():
    scores = [0.1, 0.5, 0.3, 0.9, 0.7, None]
    # N = 5 scored; fraction 0.4 -> n = 2 -> third highest
    assert fraction_threshold(scores, 0.4) == 0.5
    assert fraction_threshold(scores, 1.0) == 0.1  # keeps everything
    assert fraction_threshold(scores, 0.0) == 0.9  # n = 0: only the top (and its ties)
    assert fraction_threshold(scores, 0.39) == 0.7  # int(1.95) = 1
    assert fraction_threshold([None], 0.5) is None
    with pytest.raises(ValueError):
        fraction_threshold(scores, 1.5)


def test_ties_at_threshold_are_kept():
    t = fraction_threshold([0.5, 0.5, 0.5, 0.1], 0.25)
    assert t == 0.5 and sum(x >= t for x in [0.5, 0.5, 0.5, 0.1]) == 3
