"""A toy mixing strategy: the alt-text of the samples whose mean brightness (the toy annotator's
column, tests/annotators/brightness.py) reaches the threshold. One module; its registration is one
line (`register_strategy("bright", "tests.toys.bright:Bright", ...)`)."""
from __future__ import annotations

from recaption.mixing.strategies.base import NO_RAW, Rows, Strategy


class Bright(Strategy):
    """Keep the alt-text of bright enough images."""

    needs_threshold = True
    column = "brightness"  # an annotator's numeric column: the pool pass reads it for this strategy
    help = "the alt-text where the image's mean brightness reaches the threshold"
    reasons = {"no_raw": NO_RAW, "no_brightness": "mix: no brightness",
               "dim": "mix: brightness below threshold {t:.4f}"}

    def decide(self, rows: Rows) -> None:
        """No alt-text, no brightness, or too dark: dropped."""
        rows.cut(~rows.cols.has_raw, "no_raw")
        rows.cut_scores(rows.score(), "no_brightness", "dim")
