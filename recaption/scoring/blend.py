"""Pool-level maths: min-max normalisation, the blend, DataComp's fraction threshold (docs/formats.md#blend).

Choices where the published code is silent, documented in README:
- a null score stays null through normalisation, and a blend with a null input is null;
- where max == min the normalised column is 0.0 everywhere (it carries no ranking information,
  so the blend ranks by the other score alone);
- thresholds are computed over the non-null scores only (N = their count).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


@dataclass
class MinMax:
    lo: float | None
    hi: float | None

    @classmethod
    def of(cls, values) -> "MinMax":
        vals = [float(v) for v in values if _ok(v)]
        return cls(min(vals), max(vals)) if vals else cls(None, None)

    def __call__(self, x):
        if not _ok(x) or self.lo is None:
            return None
        if self.hi == self.lo:
            return 0.0
        return (float(x) - self.lo) / (self.hi - self.lo)


def blend(sieve, clip_raw, norm_sieve: MinMax, norm_clip: MinMax, alpha: float = 0.5):
    s, c = norm_sieve(sieve), norm_clip(clip_raw)
    if s is None or c is None:
        return None
    return (1.0 - alpha) * s + alpha * c


def fraction_threshold(scores, fraction: float) -> float | None:
    """DataComp's get_threshold: n = int(N * fraction), the n-th highest (0-based); keep >= it.

    fraction 1 keeps every scored sample (threshold = the minimum). None when nothing is scored.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    vals = sorted((float(v) for v in scores if _ok(v)), reverse=True)
    if not vals:
        return None
    n = int(len(vals) * fraction)
    return vals[min(n, len(vals) - 1)]
