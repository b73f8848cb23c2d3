"""Whole-or-nothing writes on any fsspec filesystem: write a temporary name, then rename."""
from __future__ import annotations

import contextlib
import uuid

import fsspec

from recaption.errors import RecaptionError


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    try:
        fs.makedirs(path, exist_ok=True)
    except OSError as e:
        raise RecaptionError(f"cannot create output folder {url}: {e.strerror or e}") from e


@contextlib.contextmanager
def atomic_open(url: str, mode: str = "wb"):
    """Yield a file; it appears at `url` only if the block finishes without an error."""
    fs, path = fsspec.core.url_to_fs(url)
    d, base = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = (d + "/" if d else "") + f".{base}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with fs.open(tmp, mode) as f:
            yield f
        fs.mv(tmp, path)
    except OSError as e:
        _discard(fs, tmp)
        reason = "disk full" if getattr(e, "errno", None) == 28 else (e.strerror or str(e))
        raise RecaptionError(f"cannot write {url}: {reason}") from e
    except BaseException:
        _discard(fs, tmp)
        raise


def _discard(fs, tmp: str) -> None:
    with contextlib.suppress(Exception):
        if fs.exists(tmp):
            fs.rm(tmp)


def remove_stale_temps(url: str) -> int:
    """Delete `.NAME.xxxx.tmp` files a killed run left behind; returns how many."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return 0
    n = 0
    for p in fs.ls(path, detail=False):
        b = p.rsplit("/", 1)[-1]
        if b.startswith(".") and b.endswith(".tmp"):
            with contextlib.suppress(Exception):
                fs.rm(p)
                n += 1
    return n


def write_bytes(url: str, data: bytes) -> None:
    with atomic_open(url, "wb") as f:
        f.write(data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def read_text(url: str) -> str:
    with open_url(url, "rt", encoding="utf-8") as f:
        return f.read()


def open_url(url: str, mode: str = "rb", **kw):
    """Open any fsspec URL for reading."""
    return fsspec.open(url, mode, **kw)
