"""The `aesthetic` group: LAION's aesthetic score (0-10), from the aesthetic predictor over the CLIP
image embedding: v2 (improved-aesthetic-predictor, the score of the LAION-Aesthetics V2 subsets)
by default, v1 (aesthetic-predictor) by head name (docs/formats.md#tag-columns)."""
from __future__ import annotations

from recaption.annotators.clip_heads import ClipHead, columns_for, head_options, hist_for, tag_rule


class Aesthetic(ClipHead):
    """`aesthetic`: the predicted aesthetic rating of an image, about 1 to 10."""

    name = tag = "aesthetic"
    default_head = "laion-aesthetic-v2-vit-l-14"
    columns = columns_for("aesthetic")
    options = head_options("aesthetic", default_head, "LAION's aesthetic score from the CLIP image embedding")
    hists = hist_for("aesthetic", (0.0, 10.0, 0.25), "aesthetic (LAION predictor)")
    rules = (tag_rule("min-aesthetic", "aesthetic", "min", "aesthetic >= X (LAION's predicted aesthetic score)"),)
    add_hint = "recaption score INPUT -a ANN --aesthetic --aesthetic-weights FILE"
