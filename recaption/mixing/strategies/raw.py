"""`raw`: the alt-text; with a threshold, only where its CLIP score reaches it (docs/formats.md#mixing-strategies)."""
from __future__ import annotations

from recaption.mixing.strategies.base import NO_RAW, Rows, Strategy


class Raw(Strategy):
    """Keep the alt-text; a threshold, when given, cuts on `clip_raw`."""

    reasons = {"no_raw": NO_RAW, "no_clip_raw": "mix: no clip_raw score",
               "clip_raw_below": "mix: clip_raw below threshold {t:.4f}"}

    def decide(self, rows: Rows) -> None:
        """No alt-text is dropped; with a threshold, so is a missing or lower `clip_raw`."""
        rows.cut(~rows.cols.has_raw, "no_raw")
        if rows.threshold is not None:
            rows.cut_scores(rows.cols.clip_raw, "no_clip_raw", "clip_raw_below")
