"""Errors users see as one line, the optional-dependency guard, and reason categories."""
from __future__ import annotations

import importlib.util
import re


class RecaptionError(Exception):
    """An error with a message meant for the user; the CLI prints it as one line."""


class MissingExtra(RecaptionError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    def __init__(self, module: str, extra: str):
        super().__init__(f"{module} is not installed; install it with: pip install 'recaption[{extra}]'")
        self.module, self.extra = module, extra


def require(module: str, extra: str) -> None:
    """Fail with an install hint when an optional module is missing (datatrove's pattern)."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(module, extra)


def reason_category(reason: str) -> str:
    """Group error and drop reasons for summaries: numbers and parenthesised details left out."""
    text = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "", reason.split(" (", 1)[0])
    return re.sub(r"\s+", " ", text).strip()[:120]


def unknown(what: str, name, known, extra: str = "") -> RecaptionError:
    """The one line for a name nothing registered answers to: the name, the nearest known ones
    (difflib), then every known one, so a typo is fixed from the message alone."""
    import difflib

    known = [str(k) for k in known]
    near = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    listed = f" (known: {', '.join(known)})" if known else " (none is registered)"
    return RecaptionError(f"unknown {what} {name!r}{hint}{listed}{extra}")
