"""Expand a user's INPUT into an ordered list of shard URLs (docs/formats.md#input)."""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from braceexpand import braceexpand

from recaption.errors import RecaptionError
from recaption.io.fs import exists, fs_for, is_local, open_url

# Shards are plain or gzipped tars; the whole suffix goes when naming one (`00000.tar.gz` -> `00000`).
SHARD_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_HEAD = 8192  # bytes looked at to tell a shard from a list file


def shard_suffix(url: str) -> str | None:
    """The shard suffix a URL ends with (query string ignored), if any."""
    base = _base(url)
    return next((s for s in SHARD_SUFFIXES if base.endswith(s)), None)


def _base(url: str) -> str:
    if url.startswith(("http://", "https://")):
        url = url.split("?", 1)[0].split("#", 1)[0]
    return url.rstrip("/").rsplit("/", 1)[-1]


def shard_name(url: str) -> str:
    """`s3://b/x/00012.tar` (or `.tar.gz`, `.tgz`) -> `00012`: the name annotation and stats files
    are keyed by."""
    base, suf = _base(url), shard_suffix(url)
    return base[: -len(suf)] if suf else base


def is_gzip_name(url: str) -> bool:
    """Whether a name ends in .tar.gz or .tgz."""
    return shard_suffix(url) in (".tar.gz", ".tgz")


def _unstrip(fs, url: str, path: str) -> str:
    """Give back a URL in the user's scheme for a path fsspec returned without one."""
    if "://" not in url:
        return path
    return fs.unstrip_protocol(path)


def _shards_in(paths) -> list[str]:
    return sorted(p for p in paths if shard_suffix(p))


def list_shards(spec: str | os.PathLike | list) -> list[str]:
    """A directory, one shard, a glob, a brace pattern, or a text file listing shards."""
    if isinstance(spec, (list, tuple)):
        out: list[str] = []
        for s in spec:
            out.extend(list_shards(s))
        return out
    spec = os.fspath(spec)
    if re.search(r"\{[^}]*(\.\.|,)[^}]*\}", spec):
        return _expand_braces(spec)
    fs, path = fs_for(spec)
    if _is_glob(spec):
        found = _shards_in(fs.glob(path))
        if not found:
            raise RecaptionError(f"no shards match {spec}")
        return [_unstrip(fs, spec, p) for p in found]
    if not exists(spec):
        raise RecaptionError(f"input not found: {spec}")
    # A named shard is taken as one without asking isdir: over HTTP that would fetch the whole
    # file to look for links in it.
    if shard_suffix(spec) and not (is_local(fs) and fs.isdir(path)):
        return [spec]
    if fs.isdir(path):
        found = _shards_in(fs.ls(path, detail=False))
        if not found:
            raise RecaptionError(f"no *.tar shards (nor *.tar.gz, *.tgz) in {spec}")
        return [_unstrip(fs, spec, p) for p in found]
    return _read_list_or_shard(fs, path, spec)


def _is_glob(spec: str) -> bool:
    if spec.startswith(("http://", "https://")):  # `?` starts a query there, `[` may be literal
        return "*" in spec.split("?", 1)[0]
    return any(ch in spec for ch in "*?[")


def _expand_braces(spec: str) -> list[str]:
    parts = list(braceexpand(spec))
    if not all(shard_suffix(p) for p in parts):
        return [u for s in parts for u in list_shards(s)]
    # Shard names: one existence check each, run concurrently (remote stores answer in ~10-100 ms).
    with ThreadPoolExecutor(16) as ex:
        found = list(ex.map(_exists, parts))
    missing = [p for p, ok in zip(parts, found) if not ok]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RecaptionError(f"input not found: {missing[0]}{more}")
    return parts


def _exists(url: str) -> bool:
    return exists(url)


def _read_list_or_shard(fs, path: str, spec: str) -> list[str]:
    """A file without a shard suffix: a shard if its first bytes say tar or gzip, a list if they
    are text, else an error (never a guess from a failed decode)."""
    with fs.open(path, "rb") as f:
        head = f.read(_HEAD)
        if head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar":
            return [spec]
        if b"\0" in head or not _is_utf8(head, complete=len(head) < _HEAD):
            raise RecaptionError(f"{spec} is neither a shard (.tar, .tar.gz, .tgz) nor a text file listing shards")
        data = head + f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecaptionError(f"shard list {spec} is not UTF-8 text (byte {e.start})") from e
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise RecaptionError(f"shard list {spec} is empty")
    return lines


def _is_utf8(data: bytes, complete: bool) -> bool:
    import codecs

    try:  # a head cut mid-character is still text
        codecs.getincrementaldecoder("utf-8")().decode(data, final=complete)
        return True
    except UnicodeDecodeError:
        return False


def check_unique_names(shards: list[str]) -> None:
    """Refuse two different shards with the same name: annotation files are keyed by name."""
    seen: dict[str, str] = {}
    for s in shards:
        n = shard_name(s)
        if n in seen:
            raise RecaptionError(
                f"two shards share the name {n!r} ({seen[n]} and {s}); annotation files are keyed by shard name"
            )
        seen[n] = s


def stats_url(url: str) -> str | None:
    """img2dataset's `NAME_stats.json` beside a shard (`NAME.tar`, `NAME.tar.gz`, `NAME.tgz`)."""
    suf = shard_suffix(url)
    if not suf:
        return None
    head, _, query = url.partition("?") if url.startswith(("http://", "https://")) else (url, "", "")
    return head[: -len(suf)] + "_stats.json"


def sample_count_hint(url: str) -> int | None:
    """Samples in a shard per img2dataset's `NAME_stats.json` beside it (for progress), if present."""
    import json

    st_url = stats_url(url)
    if st_url is None:
        return None
    try:
        with open_url(st_url, "rt", encoding="utf-8") as f:
            st = json.load(f)
        n = st.get("successes", st.get("count"))
        return int(n) if n is not None else None
    except (OSError, ValueError, FileNotFoundError):
        return None


def shards_of(input_spec) -> list[str]:
    """The input shard URLs, in order, each once; a bad INPUT is one clear error."""
    shards = list(dict.fromkeys(list_shards(input_spec)))  # a shard listed twice is read once
    if not shards:
        raise RecaptionError(f"no shards in {input_spec}")
    check_unique_names(shards)
    return shards
