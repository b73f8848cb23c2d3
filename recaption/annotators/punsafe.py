"""The `punsafe` group: LAION-5B's NSFW probability, from LAION's CLIP-based NSFW detector over the
CLIP image embedding (docs/formats.md#tag-columns)."""
from __future__ import annotations

from recaption.annotators.clip_heads import ClipHead


class Punsafe(ClipHead):
    """`punsafe`: LAION-AI/CLIP-based-NSFW-Detector's probability that an image is NSFW (0-1)."""

    tag, default_head = "punsafe", "laion-nsfw-vit-l-14"
    what = "LAION's NSFW probability (punsafe) from the CLIP image embedding"
    label = "punsafe (LAION CLIP NSFW)"
    sensitive = True
    rule = ("max-punsafe", "max", "punsafe <= X (LAION's CLIP-based NSFW probability)")
