"""Scores (docs/formats.md#scores): CLIP image-text cosine, SIEVE caption-caption cosine, the blend."""
