"""The `aesthetic` group: LAION's aesthetic score (0-10), from the aesthetic predictor over the CLIP
image embedding: v2 (improved-aesthetic-predictor, the score of the LAION-Aesthetics V2 subsets)
by default, v1 (aesthetic-predictor) by head name (docs/formats.md#tag-columns)."""
from __future__ import annotations

from recaption.annotators.clip_heads import ClipHead


class Aesthetic(ClipHead):
    """`aesthetic`: the predicted aesthetic rating of an image, about 1 to 10."""

    tag, default_head = "aesthetic", "laion-aesthetic-v2-vit-l-14"
    what = "LAION's aesthetic score from the CLIP image embedding"
    bins, label = (0.0, 10.0, 0.25), "aesthetic (LAION predictor)"
    rule = ("min-aesthetic", "min", "aesthetic >= X (LAION's predicted aesthetic score)")
