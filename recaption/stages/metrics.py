"""Per-sample filter metrics (the published filters' inputs), computed while a shard is read:
caption words and characters, language, the original and stored image sizes, image bytes."""
from __future__ import annotations


def _int(x) -> int | None:
    try:
        v = int(x)
    except (TypeError, ValueError):
        return None
    return v if 0 <= v < 2**31 else None


def sample_metrics(rec, size: tuple[int, int] | None) -> dict:
    """Metrics of one read sample; `size` is its stored image's (width, height), None if undecodable."""
    raw = rec.raw_caption
    meta = rec.meta or {}
    return {
        "caption_words": len(raw.split()) if raw is not None else None,
        "caption_chars": len(raw) if raw is not None else None,
        "original_width": _int(meta.get("original_width")),
        "original_height": _int(meta.get("original_height")),
        "width": size[0] if size else None,
        "height": size[1] if size else None,
        "image_bytes": len(rec.image_bytes) if rec.image_field else None,
    }


def add_language(rows: list[dict], lid) -> None:
    """Fill `lang` and `lang_prob` of rows from their raw captions, one model call per batch."""
    labels, probs = lid.predict([r["raw_caption"] for r in rows])
    for r, label, p in zip(rows, labels, probs):
        r["lang"], r["lang_prob"] = label, p
