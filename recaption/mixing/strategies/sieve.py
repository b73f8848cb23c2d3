"""`sieve`: the alt-text where the blend of SIEVE and CLIP reaches the threshold (SIEVE's
`baselines/apply_filter.py`; docs/formats.md#blend)."""
from __future__ import annotations

from recaption.mixing.strategies.base import NO_RAW, Rows, Strategy


class Sieve(Strategy):
    """Keep the alt-text ranked by the blend; a missing blend input drops the sample."""

    needs_threshold = True
    column = "blend"
    reasons = {"no_raw": NO_RAW, "no_blend": "mix: no blend score (sieve or clip_raw missing)",
               "blend_below": "mix: blend below threshold {t:.4f}"}

    def decide(self, rows: Rows) -> None:
        """No alt-text, no blend, or a blend below the threshold is dropped."""
        rows.cut(~rows.cols.has_raw, "no_raw")
        rows.cut_scores(rows.blend, "no_blend", "blend_below")
