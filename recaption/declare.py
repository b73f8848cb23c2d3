"""Options declared as data: what a registered extension (an annotator, an engine) takes on the
command line and in recipes. The CLI builds its flags from these, so a new extension needs no CLI
code; nothing here imports anything heavy (`recaption --help` reads them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One setting an extension takes: a command-line option (and, for an annotator, a recipe key of
    its section).

    `name` is the Python name (unique across the extensions of a kind); the flag is `--name-with-dashes` unless
    `flags` says otherwise. A bool is a flag that is off by default. `multiple` makes it repeatable
    (a list). `choices` limits the values (the help lists them): a tuple, or a registry (an object
    with `names()`) or a function read each time a command is built, so an entry registered at
    run time is a choice like a built-in one."""

    name: str
    type: type = str
    default: Any = None
    help: str = ""
    flags: tuple[str, ...] = ()
    multiple: bool = False
    choices: Any = ()  # tuple[str, ...], or a registry / function giving them when asked

    def choice_list(self) -> tuple[str, ...]:
        """The values the option takes now (empty: any value of its type)."""
        c = self.choices
        if hasattr(c, "names"):
            return tuple(c.names())
        return tuple(c() if callable(c) else c)

    @property
    def flag(self) -> str:
        """The option's long flag."""
        return next((f for f in self.flags if f.startswith("--")), "--" + self.name.replace("_", "-"))
