"""SIEVE's masking: ordered, case-insensitive, plain substring removal (docs/formats.md#sieve-score)."""
from __future__ import annotations

import re
from functools import lru_cache

from recaption.resources import named_or_path

DEFAULT_MASK = "sieve"


@lru_cache(maxsize=16)
def load_mask_list(name_or_path: str = DEFAULT_MASK) -> tuple[str, ...]:
    """The phrases of a mask list (prompts/masks name or file), in order."""
    path = named_or_path("masks", name_or_path, ".txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))


def masker(phrases: tuple[str, ...]):
    """A function that removes each phrase, in order, case-insensitively, as plain substrings."""
    pats = [re.compile(re.escape(p), re.IGNORECASE) for p in phrases]

    def mask(text: str) -> str:
        # No whitespace clean-up: the reference leaves the text as the replacements leave it.
        for p in pats:
            text = p.sub("", text)
        return text

    return mask


def mask_text(text: str, phrases: tuple[str, ...] | None = None) -> str:
    """One text with a mask list applied (the default list unless given)."""
    return masker(phrases if phrases is not None else load_mask_list())(text)
