"""Caption mixing (docs/formats.md#mixing-strategies): columnar decisions over annotation files, then a
lossless shard rewrite.

The mixing strategies are registered here by name, as "module:Class" targets imported on first
use, with a line of help: the CLI lists them (and its --help) without importing numpy. A
strategy's contract is `recaption.mixing.strategies.base.Strategy`; adding one is its module plus
one `register_strategy` line below.
"""
from __future__ import annotations

import re

from recaption.errors import RecaptionError
from recaption.registry import Registry


# name -> the Strategy class ("module:Class" until first used), with its help line as `help`, in
# the order the dry run, the report and --help show them; entry points of `recaption.strategies`
# follow the built-in ones
STRATEGIES = Registry("strategy", "recaption.strategies")


def register_strategy(name: str, target, help: str | None = None, *, builtin: bool = False) -> None:
    """Register a mixing strategy under `name`: `target` is "module:Class" (imported when first
    used) or the class; `help` is its line in --help (default: the class's `help`). Registering a
    name again with the same target is a no-op; with another target, an error."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise RecaptionError(f"a strategy name is lower-case letters, digits and dashes, got {name!r}")
    STRATEGIES.register(name, target, builtin=builtin, help=help)


def unregister_strategy(name: str) -> None:
    """Remove a registered strategy (tests, plugins that withdraw); outcome codes are re-allocated."""
    STRATEGIES.unregister(name)


def registry_changes() -> int:
    """How many times the registry changed (a loaded table compares it with its own)."""
    return STRATEGIES.changes


def strategy_help(name: str) -> str:
    """A strategy's line in --help: the help it was registered with, else its class's (an entry
    point's class is imported for it)."""
    text = STRATEGIES.meta(name).get("help")
    return text if text else (getattr(STRATEGIES.get(name), "help", "") or "")


def strategies_help() -> str:
    """One line per strategy for --help: `name: what it writes`."""
    return "; ".join(f"{n}: {strategy_help(n)}" for n in STRATEGIES.names())


register_strategy("raw", "recaption.mixing.strategies.raw:Raw",
                  "the alt-text, where clip_raw reaches the threshold if one is given", builtin=True)
register_strategy("synthetic", "recaption.mixing.strategies.synthetic:Synthetic",
                  "the synthetic caption, where its CLIP score reaches the threshold if one is given", builtin=True)
register_strategy("threshold", "recaption.mixing.strategies.threshold:Threshold",
                  "the alt-text where clip_raw reaches the threshold, else the synthetic caption", builtin=True)
register_strategy("both", "recaption.mixing.strategies.both:Both",
                  "as raw, with the synthetic caption in syn.txt", builtin=True)
register_strategy("sieve", "recaption.mixing.strategies.sieve:Sieve",
                  "the alt-text where the blend of SIEVE and clip_raw reaches the threshold", builtin=True)


# `mix --caption-keys`: which captions get a top-level json key of their own (recaption.output.caption_keys)
CAPTION_KEYS = ("none", "best", "all", "sentences")  # each writes what the one before does, and more
