"""Whole-or-nothing writes on any fsspec filesystem.

Local and POSIX-like filesystems: write a temporary name, then rename. Object stores (S3, GCS,
Azure, ...): write the final name directly, because there a single upload is already atomic (the
object appears only when the upload completes; an aborted one leaves nothing) and a rename would
be a server-side copy plus a delete. Either way a file that exists is a finished file.
"""
from __future__ import annotations

import contextlib
import os
import re
import uuid

from recaption.errors import RecaptionError
from recaption.io.fs import fs_for, is_local, is_object_store, open_url  # open_url: re-exported for readers


def join(base: str, name: str) -> str:
    """`base/name` for paths and URLs alike."""
    return base.rstrip("/") + "/" + name


def exists(url: str) -> bool:
    """Whether a path or URL exists."""
    fs, path = fs_for(url)
    return fs.exists(path)


def file_info(url: str) -> dict:
    """A file's size, modification time and ETag (null where the store has none), as the
    filesystem reports them: one metadata request, never a read of the data (for provenance)."""
    fs, path = fs_for(url)
    i = fs.info(path)
    mtime = i.get("mtime", i.get("LastModified", i.get("updated")))
    etag = i.get("ETag", i.get("etag"))
    return {"size": i.get("size"), "mtime": None if mtime is None else str(mtime),
            "etag": None if etag is None else str(etag)}


def makedirs(url: str) -> None:
    """Create a folder (and its parents); a clear error when it cannot be."""
    fs, path = fs_for(url)
    if is_object_store(fs):
        return  # folders are key prefixes: nothing to create (and never a bucket by accident)
    try:
        fs.makedirs(path, exist_ok=True)
    except OSError as e:
        raise RecaptionError(f"cannot create output folder {url}: {e.strerror or e}") from e


def listdir(url: str) -> list[str]:
    """Base names in a folder; empty when it does not exist (an object-store prefix with no
    objects yet)."""
    fs, path = fs_for(url)
    try:
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []


def remove(url: str) -> None:
    """Remove a file if it is there."""
    fs, path = fs_for(url)
    fs.rm(path)


@contextlib.contextmanager
def atomic_open(url: str, mode: str = "wb"):
    """Yield a file; it appears at `url` only if the block finishes without an error."""
    fs, path = fs_for(url)
    try:
        if is_object_store(fs):
            with _direct(fs, path, mode) as f:
                yield f
        else:
            with _via_temp(fs, path, mode) as f:
                yield f
    except OSError as e:
        reason = "disk full" if getattr(e, "errno", None) == 28 else (e.strerror or str(e))
        raise RecaptionError(f"cannot write {url}: {reason}") from e


# A temporary name says whose it is: recaption's, and which process wrote it, so that cleaning up
# after a killed run removes only recaption's leftovers, never another tool's hidden *.tmp files,
# and never those of a process still writing.
TEMP = re.compile(r"^\..+\.recaption-(\d+)-[0-9a-f]{8}\.tmp$")


def temp_name(base: str) -> str:
    """The temporary name `base` is written under before its rename: `.BASE.recaption-PID-RAND.tmp`."""
    return f".{base}.recaption-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def _via_temp(fs, path: str, mode: str):
    d, base = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = (d + "/" if d else "") + temp_name(base)
    try:
        with fs.open(tmp, mode) as f:
            yield f
        fs.mv(tmp, path)
    except BaseException:
        _discard(fs, tmp)
        raise


# Checks run before an object-store upload is committed, by folder (`recaption.io.folders.locked`
# registers one: the folder's lock is still this run's); an object store has no exclusive create,
# so a lock there is checked at each commit instead (best effort).
_COMMIT_CHECKS: dict[int, tuple[str, object]] = {}


def add_commit_check(folder_path: str, check) -> int:
    """Run `check()` (it raises to refuse) before committing any upload under `folder_path`; returns a handle."""
    handle = id(check)
    _COMMIT_CHECKS[handle] = (folder_path.rstrip("/") + "/", check)
    return handle


def remove_commit_check(handle: int) -> None:
    """Stop running a check `add_commit_check` registered."""
    _COMMIT_CHECKS.pop(handle, None)


@contextlib.contextmanager
def _direct(fs, path: str, mode: str):
    """Upload to the final name; commit on close, abort the upload on any error."""
    f = fs.open(path, mode)
    try:
        yield f
        for prefix, check in list(_COMMIT_CHECKS.values()):
            if path.startswith(prefix):
                check()
        f.close()  # completes the upload: the object becomes visible whole, now
    except BaseException:
        with contextlib.suppress(Exception):
            f.discard()  # aborts a multipart/resumable upload; a one-shot upload never started
        f.closed = True  # so neither close() nor garbage collection commits the partial data
        raise


def _discard(fs, tmp: str) -> None:
    with contextlib.suppress(Exception):
        if fs.exists(tmp):
            fs.rm(tmp)


def remove_stale_temps(url: str) -> int:
    """Delete what a killed run left behind: recaption's temporary files (`temp_name`) whose process
    is gone (any other hidden `*.tmp` file is not ours and stays), and on S3 the unfinished
    multipart uploads of recaption's file names in this folder. Returns how many."""
    fs, path = fs_for(url)
    n = 0
    for b in listdir(url):
        m = TEMP.match(b)
        if m and not (is_local(fs) and _alive(int(m.group(1)))):
            with contextlib.suppress(Exception):
                fs.rm(join(path, b))
                n += 1
    if is_object_store(fs) and hasattr(fs, "call_s3"):
        n += _abort_s3_uploads(fs, path)
    return n


RECAPTION_SUFFIXES = (".tar", ".parquet", "_stats.json", "_summary.json", "_recaption.json", ".npy")


def _abort_s3_uploads(fs, path: str) -> int:
    """Uploads a killed writer never completed: invisible, but stored (and billed) until aborted."""
    bucket, prefix, _ = fs.split_path(path)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    n = 0
    with contextlib.suppress(Exception):
        listed = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        for up in listed.get("Uploads", []):
            name = up["Key"][len(prefix):]
            if "/" not in name and name.endswith(RECAPTION_SUFFIXES):
                with contextlib.suppress(Exception):
                    fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                    n += 1
    return n


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file atomically."""
    with atomic_open(url, "wb") as f:
        f.write(data)


def write_text(url: str, text: str) -> None:
    """Write a whole UTF-8 text file atomically."""
    write_bytes(url, text.encode("utf-8"))


def read_text(url: str) -> str:
    """A UTF-8 text file's content."""
    with open_url(url, "rt", encoding="utf-8") as f:
        return f.read()


def local_path(url: str) -> str | None:
    """The OS path of a local file URL; None for any other filesystem."""
    fs, path = fs_for(url)
    return path if is_local(fs) else None


__all__ = ["atomic_open", "temp_name", "write_bytes", "write_text", "read_text", "open_url", "exists", "file_info",
           "makedirs", "join", "listdir", "local_path", "remove", "remove_stale_temps"]
