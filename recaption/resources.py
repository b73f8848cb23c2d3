"""Where data files live: `prompts/` (mask lists, VLM templates), presets and recipes."""
from __future__ import annotations

import sys
from pathlib import Path

from recaption.errors import RecaptionError

PACKAGE = Path(__file__).resolve().parent


def prompts_dir() -> Path:
    for cand in (PACKAGE.parent / "prompts", Path(sys.prefix) / "share" / "recaption" / "prompts"):
        if cand.is_dir():
            return cand
    raise RecaptionError("cannot find the prompts/ folder; reinstall recaption")


def named_or_path(kind: str, name: str, suffix: str) -> Path:
    """A name from `prompts/<kind>/` (without suffix) or a path to a user's own file."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    cand = prompts_dir() / kind / f"{name}{suffix}"
    if cand.is_file():
        return cand
    choices = ", ".join(sorted(x.stem for x in (prompts_dir() / kind).glob(f"*{suffix}")))
    raise RecaptionError(f"unknown {kind[:-1]} {name!r}: not a file, and not one of: {choices}")


def sample_shards_dir() -> Path:
    return PACKAGE / "data" / "sample-shards"
