"""The `punsafe` group: LAION-5B's NSFW probability, from LAION's CLIP-based NSFW detector over the
CLIP image embedding (docs/formats.md#tag-columns)."""
from __future__ import annotations

from recaption.annotators.clip_heads import ClipHead, columns_for, head_options, hist_for, tag_rule


class Punsafe(ClipHead):
    """`punsafe`: LAION-AI/CLIP-based-NSFW-Detector's probability that an image is NSFW (0-1)."""

    name = tag = "punsafe"
    default_head = "laion-nsfw-vit-l-14"
    columns = columns_for("punsafe")
    options = head_options("punsafe", default_head, "LAION's NSFW probability (punsafe) from the CLIP image embedding")
    hists = hist_for("punsafe", (0.0, 1.0, 0.05), "punsafe (LAION CLIP NSFW)")
    rules = (tag_rule("max-punsafe", "punsafe", "max", "punsafe <= X (LAION's CLIP-based NSFW probability)"),)
    add_hint = "recaption score INPUT -a ANN --punsafe --punsafe-weights FILE"
