"""`threshold`: the alt-text where `clip_raw` reaches the threshold, else the synthetic caption
(Nguyen et al.; with `--filter-synthetic` the synthetic caption must reach it too;
docs/formats.md#mixing-strategies)."""
from __future__ import annotations

import numpy as np

from recaption.mixing.strategies.base import NO_SYN_CLIP, Rows, Strategy
from recaption.scoring.blend import scored


class Threshold(Strategy):
    """Raw where it scores well enough, else the synthetic caption; shown with and without
    `--filter-synthetic` side by side."""

    needs_threshold = True
    needs_synthetic = True
    variants = ({}, {"filter_synthetic": True})
    reasons = {"no_syn_clip": NO_SYN_CLIP,
               "raw_below_no_syn": "mix: raw caption below threshold and no synthetic caption",
               "both_below": "mix: raw and synthetic both below threshold {t:.4f}"}

    def decide(self, rows: Rows) -> None:
        """Rows whose alt-text misses the threshold fall back on the synthetic caption, or are
        dropped without one; with `filter_synthetic`, also when it misses the threshold too."""
        c, t = rows.cols, rows.threshold
        has, clip_syn = rows.synthetic()
        with np.errstate(invalid="ignore"):
            raw_ok = c.has_raw & scored(c.clip_raw) & (c.clip_raw >= t) if t is not None else np.zeros(c.n, bool)
        syn = ~raw_ok
        rows.use_synthetic(syn)
        rows.cut(syn & ~has, "raw_below_no_syn")
        if rows.cfg.filter_synthetic:
            rows.cut_scores(clip_syn, "no_syn_clip", "both_below", where=syn)
