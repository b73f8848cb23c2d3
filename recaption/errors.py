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


# A number standing alone (a count, a size, a sample's key in `'000123.jpg'`, an address `0x7f..`),
# never digits inside a name (`jpeg2000`, `utf-8`, `ViT-B-32`, `10MB`): those are the reason itself.
_NUMBER = re.compile(r"(?<![\w.])(?<![A-Za-z]-)-?(?:0x[0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w])")
_SIZE = re.compile(r"(?<![\w.])\d+x\d+(?![\w])")  # an image's WxH
NUMBER_MARK = "#"


def reason_category(reason: str) -> str:
    """Group error and drop reasons for summaries: a reason with each standalone number as `#`, so
    reasons that differ only in their numbers count together and every word (and digit inside a
    word) of the reason stays as written."""
    text = _NUMBER.sub(NUMBER_MARK, _SIZE.sub(f"{NUMBER_MARK}x{NUMBER_MARK}", reason))
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= 160 else text[:159] + "…"


LISTED = 20  # known names an error line lists in full


def unknown(what: str, name, known, extra: str = "") -> RecaptionError:
    """The one line for a name nothing registered answers to: the name, the nearest known ones
    (difflib), then every known one, so a typo is fixed from the message alone."""
    import difflib

    known = [str(k) for k in known]
    near = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    # a long list (open_clip's hundreds of model names) would bury the line: the first ones and a count
    shown = known if len(known) <= LISTED else [*known[:LISTED], f"... {len(known) - LISTED} more"]
    listed = f" (known: {', '.join(shown)})" if known else " (none is registered)"
    return RecaptionError(f"unknown {what} {name!r}{hint}{listed}{extra}")
