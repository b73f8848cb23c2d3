"""Errors users see as one line, and the optional-dependency guard."""
from __future__ import annotations

import functools
import importlib.util


class RecaptionError(Exception):
    """An error with a message meant for the user; the CLI prints it as one line."""


class MissingExtra(RecaptionError):
    def __init__(self, module: str, extra: str):
        super().__init__(
            f"{module} is not installed; install it with: pip install 'recaption[{extra}]'"
        )
        self.module, self.extra = module, extra


def require(module: str, extra: str) -> None:
    """Fail with an install hint when an optional module is missing (datatrove's pattern)."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(module, extra)


def requires(module: str, extra: str):
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*a, **kw):
            require(module, extra)
            return fn(*a, **kw)

        return inner

    return wrap
