"""`synthetic`: the synthetic caption; with a threshold, only where its CLIP score reaches it
(docs/formats.md#mixing-strategies)."""
from __future__ import annotations

from recaption.mixing.strategies.base import NO_SYN_CLIP, Rows, Strategy


class Synthetic(Strategy):
    """Replace every caption by the synthetic one; a threshold, when given, cuts on its CLIP score."""

    column = "clip_synthetic"
    needs_synthetic = True
    reasons = {"no_syn": "mix: no synthetic caption", "no_syn_clip": NO_SYN_CLIP,
               "syn_below": "mix: synthetic clip below threshold {t:.4f}"}

    def decide(self, rows: Rows) -> None:
        """No candidate is dropped; with a threshold, so is a missing or lower synthetic CLIP score."""
        has, clip_syn = rows.synthetic()
        rows.use_synthetic()
        rows.cut(~has, "no_syn")
        if rows.threshold is not None:
            rows.cut_scores(clip_syn, "no_syn_clip", "syn_below")
