"""A toy engine, as a newcomer would write one: every item in this process, last item first (so a
test can tell it ran), and the annotation-file passes one file at a time. One module; registering
it is one line (`recaption.engines.ENGINES.register("serial", "tests.engines.serial")`)."""
from __future__ import annotations

from recaption.declare import Option
from recaption.engines import as_dict
from recaption.errors import RecaptionError

OPTIONS = (Option("serial_reverse", bool, False, "run items last first"),)


def validate(ex) -> None:
    """Only whole-process work: refuse workers."""
    if ex.workers not in (None, 1):
        raise RecaptionError("the serial engine runs one worker")


def preflight(ex, cpu_only: bool = False) -> None:
    """Nothing to reach."""


def run(stage, items, ex, *, desc="", count_of=None, cpu_only=False) -> list[dict]:
    """Every item in this process, in order or last first."""
    order = list(reversed(items)) if ex.get("serial_reverse") else list(items)
    try:
        return [as_dict(stage(it)) for it in order]
    finally:
        if hasattr(stage, "close"):
            stage.close()


class OneByOne:
    """Maps a function over items one at a time, in order."""

    in_process = True

    def map(self, fn, items):
        """fn over items, in order."""
        for it in items:
            yield fn(it)


def mapper(ex) -> OneByOne:
    """One file at a time."""
    return OneByOne()
