"""Caption mixing (docs/formats.md#mixing-strategies): columnar decisions over annotation files, then a
lossless shard rewrite.

The mixing strategies are registered here by name, as "module:Class" targets imported on first
use, with a line of help: the CLI lists them (and its --help) without importing numpy. A
strategy's contract is `recaption.mixing.strategies.base.Strategy`; adding one is its module plus
one `register_strategy` line below.
"""
from __future__ import annotations

import re
from typing import NamedTuple


class Registered(NamedTuple):
    """A registered strategy: where its class is ("module:Class", or the class itself) and its help line."""

    target: object
    help: str


# name -> Registered, in the order the dry run, the report and --help show them
STRATEGIES: dict[str, Registered] = {}
_changes = 0  # bumped by every change, so the loaded table (`strategies.base`) knows when to reload


def register_strategy(name: str, target, help: str) -> None:
    """Register a mixing strategy under `name`: `target` is "module:Class" (imported when first
    used) or the class; `help` is its line in --help. Registering a name again with the same
    target is a no-op; with another target, an error."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise ValueError(f"a strategy name is lower-case letters, digits and dashes, got {name!r}")
    old = STRATEGIES.get(name)
    if old is not None and old.target != target:
        raise ValueError(f"strategy {name!r} is registered already ({old.target})")
    global _changes
    STRATEGIES[name] = Registered(target, help)
    _changes += 1


def unregister_strategy(name: str) -> None:
    """Remove a registered strategy (tests, plugins that withdraw); outcome codes are re-allocated."""
    global _changes
    STRATEGIES.pop(name, None)
    _changes += 1


def registry_changes() -> int:
    """How many times the registry changed (a loaded table compares it with its own)."""
    return _changes


def strategies_help() -> str:
    """One line per strategy for --help: `name: what it writes`."""
    return "; ".join(f"{n}: {r.help}" for n, r in STRATEGIES.items())


register_strategy("raw", "recaption.mixing.strategies.raw:Raw",
                  "the alt-text, where clip_raw reaches the threshold if one is given")
register_strategy("synthetic", "recaption.mixing.strategies.synthetic:Synthetic",
                  "the synthetic caption, where its CLIP score reaches the threshold if one is given")
register_strategy("threshold", "recaption.mixing.strategies.threshold:Threshold",
                  "the alt-text where clip_raw reaches the threshold, else the synthetic caption")
register_strategy("both", "recaption.mixing.strategies.both:Both",
                  "as raw, with the synthetic caption in syn.txt")
register_strategy("sieve", "recaption.mixing.strategies.sieve:Sieve",
                  "the alt-text where the blend of SIEVE and clip_raw reaches the threshold")


# `mix --caption-keys`: which captions get a top-level json key of their own (recaption.output.caption_keys)
CAPTION_KEYS = ("none", "best", "all")
