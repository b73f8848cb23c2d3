"""Pool-level maths: min-max normalisation, the blend, DataComp's fraction threshold (docs/formats.md#blend).

Choices where the published code is silent, documented in README:
- a missing score (null, NaN, or infinite: `scored` is the one test) stays missing through
  normalisation, and a blend with a missing input is missing;
- where max == min the normalised column is 0.0 everywhere (it carries no ranking information,
  so the blend ranks by the other score alone);
- thresholds are computed over the scored values only (N = their count).

Everything works on numpy arrays (NaN = missing); the scalar forms are for single rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def scored(x) -> np.ndarray:
    """True where a score exists: not null (NaN after `as_scores`), not NaN, not infinite."""
    return np.isfinite(x)


def score_column(col) -> np.ndarray:
    """An Arrow score column as numpy (float32 stays float32), NaN where a score is missing (null,
    NaN, +-inf: `scored`)."""
    import pyarrow as pa

    from recaption.io.arrays import one

    a = one(col)
    if not pa.types.is_floating(a.type):
        a = a.cast(pa.float64())
    x = a.to_numpy(zero_copy_only=False)
    return np.where(scored(x), x, np.nan).astype(x.dtype, copy=False)


def as_scores(values) -> np.ndarray:
    """float64 array of scores with every missing one (None, NaN, inf) as NaN."""
    a = np.array([np.nan if v is None else v for v in values], dtype=np.float64) \
        if not isinstance(values, np.ndarray) else values.astype(np.float64, copy=False)
    return np.where(scored(a), a, np.nan)


def json_float(x) -> float | None:
    """A score fit for JSON: a Python float, or None where it is missing (never NaN/Infinity)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class MinMax:
    """The range of a score over the pool, and min-max normalisation by it."""
    lo: float | None
    hi: float | None

    @classmethod
    def of(cls, values) -> "MinMax":
        """The range of the scored values (NaN, None and infinities left out)."""
        a = values if isinstance(values, np.ndarray) else as_scores(list(values))
        a = a[scored(a)]
        return cls(float(a.min()), float(a.max())) if a.size else cls(None, None)

    def merge(self, other: "MinMax") -> "MinMax":
        """The range of two ranges together (per-file ranges merged on the driver)."""
        if self.lo is None:
            return other
        if other.lo is None:
            return self
        return MinMax(min(self.lo, other.lo), max(self.hi, other.hi))

    def norm(self, x: np.ndarray) -> np.ndarray:
        """(x - lo) / (hi - lo) in float64 (NaN where x is missing); 0.0 for a constant column."""
        x = np.asarray(x, dtype=np.float64)
        if self.lo is None:
            return np.full(x.shape, np.nan)
        if self.hi == self.lo:
            return np.where(scored(x), 0.0, np.nan)
        return np.where(scored(x), (x - self.lo) / (self.hi - self.lo), np.nan)

    def __call__(self, x):
        v = self.norm(np.array([np.nan if x is None else x], dtype=np.float64))[0]
        return float(v) if scored(v) else None


def blend_array(sieve: np.ndarray, clip_raw: np.ndarray, norm_sieve: MinMax, norm_clip: MinMax,
                alpha: float = 0.5) -> np.ndarray:
    """SIEVE's blend per row, float64, NaN where either input is missing."""
    return (1.0 - alpha) * norm_sieve.norm(sieve) + alpha * norm_clip.norm(clip_raw)


def blend(sieve, clip_raw, norm_sieve: MinMax, norm_clip: MinMax, alpha: float = 0.5):
    """(1 - alpha) * norm(sieve) + alpha * norm(clip_raw); None when either is missing."""
    b = blend_array(as_scores([sieve]), as_scores([clip_raw]), norm_sieve, norm_clip, alpha)[0]
    return float(b) if scored(b) else None


def kept_rank(n_scored: int, fraction: float) -> int:
    """Ascending rank of DataComp's threshold among N scored values: the n-th highest,
    n = int(N * fraction), clamped so that fraction 1 gives the minimum."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    n = min(int(n_scored * fraction), n_scored - 1)
    return n_scored - 1 - n
