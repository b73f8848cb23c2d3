"""Expand a user's INPUT into an ordered list of shard URLs (docs/formats.md#input)."""
from __future__ import annotations

import os
import re

import fsspec
from braceexpand import braceexpand

from recaption.errors import RecaptionError


def shard_name(url: str) -> str:
    """`s3://b/x/00012.tar` -> `00012`: the name annotation and stats files are keyed by."""
    base = url.rstrip("/").rsplit("/", 1)[-1]
    return base[:-4] if base.endswith(".tar") else base


def _fs(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def _unstrip(fs, url: str, path: str) -> str:
    """Give back a URL in the user's scheme for a path fsspec returned without one."""
    if "://" not in url:
        return path
    return fs.unstrip_protocol(path)


def list_shards(spec: str | os.PathLike | list) -> list[str]:
    """A directory, one tar, a glob, a brace pattern, or a text file listing shards."""
    if isinstance(spec, (list, tuple)):
        out: list[str] = []
        for s in spec:
            out.extend(list_shards(s))
        return out
    spec = os.fspath(spec)
    if re.search(r"\{[^}]*(\.\.|,)[^}]*\}", spec):
        return [u for s in braceexpand(spec) for u in list_shards(s)]
    fs, path = _fs(spec)
    if any(ch in path for ch in "*?["):
        found = sorted(p for p in fs.glob(path) if p.endswith(".tar"))
        if not found:
            raise RecaptionError(f"no shards match {spec}")
        return [_unstrip(fs, spec, p) for p in found]
    if not fs.exists(path):
        raise RecaptionError(f"input not found: {spec}")
    if fs.isdir(path):
        found = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".tar"))
        if not found:
            raise RecaptionError(f"no *.tar shards in {spec}")
        return [_unstrip(fs, spec, p) for p in found]
    if path.endswith(".tar"):
        return [spec]
    with fs.open(path, "rt", encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise RecaptionError(f"shard list {spec} is empty")
    return lines


def check_unique_names(shards: list[str]) -> None:
    seen: dict[str, str] = {}
    for s in shards:
        n = shard_name(s)
        if n in seen:
            raise RecaptionError(
                f"two shards share the name {n!r} ({seen[n]} and {s}); annotation files are keyed by shard name"
            )
        seen[n] = s


def sample_count_hint(url: str) -> int | None:
    """Samples in a shard per img2dataset's `NAME_stats.json` beside it (for progress), if present."""
    import json

    if not url.endswith(".tar"):
        return None
    try:
        with fsspec.open(url[:-4] + "_stats.json", "rt") as f:
            st = json.load(f)
        n = st.get("successes", st.get("count"))
        return int(n) if n is not None else None
    except (OSError, ValueError, FileNotFoundError):
        return None
