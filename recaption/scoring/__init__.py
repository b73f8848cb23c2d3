"""Scores of SPEC 3: CLIP image-text cosine, SIEVE caption-caption cosine, the blend."""
