"""Folders recaption writes into: refusing overlaps, claiming a folder for one set of settings,
and removing, on --overwrite, only the files recaption recorded writing there.

Every folder recaption writes carries `_recaption.json`: the kind of folder, the settings that
wrote it and (for output folders) the names of the files written. The same settings resume;
other settings are refused unless --overwrite; --overwrite never touches a file not recorded.
While a run writes a folder it holds the folder's lock, `_recaption.lock` (`locked`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid

from recaption.errors import RecaptionError
from recaption.io import atomic
from recaption.io.atomic import exists, join, makedirs, read_text, remove, remove_stale_temps, write_text
from recaption.io.fs import fs_for, is_local, is_object_store
from recaption.io.sources import shard_suffix

log = logging.getLogger("recaption")
RECORD = "_recaption.json"
LOCK = "_recaption.lock"
FORMAT_VERSION = 1
# an annotation record's group -> settings keys its older files lack (an older recaption wrote them)
UNRECORDED = "unrecorded"


# -- overlaps --------------------------------------------------------------------------------
def normalize(url: str) -> str:
    """`proto://absolute/path` without a trailing slash, symlinks resolved for local paths."""
    fs, path = fs_for(str(url))
    proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if proto in ("file", "local"):
        proto, path = "file", os.path.realpath(path)
    return f"{proto}://{path.rstrip('/') or '/'}"


def relation(a: str, b: str) -> str | None:
    """How normalized folder `a` relates to `b`: 'is', 'lies inside', 'contains', or None."""
    if a == b:
        return "is"
    if a.startswith(b.rstrip("/") + "/"):
        return "lies inside"
    if b.startswith(a.rstrip("/") + "/"):
        return "contains"
    return None


def input_folders(shards: list[str]) -> set[str]:
    """The folders the input shards live in."""
    return {normalize(s).rsplit("/", 1)[0] for s in shards}


def related(a: str, b: str) -> str | None:
    """How folder `a` relates to folder `b` (as `relation`), by their paths and, for local
    folders, by device and inode too: a bind mount or a second mount of the same folder has
    another path but is the same folder."""
    na, nb = normalize(a), normalize(b)
    return relation(na, nb) or (_same_files(_show(na), _show(nb)) if _is_file_url(na) and _is_file_url(nb) else None)


def _is_file_url(n: str) -> bool:
    return n.startswith("file://")


def _chain(path: str) -> list[tuple[int, int] | None]:
    """(device, inode) of a path and of each folder above it, nearest first; None where a part
    does not exist (yet)."""
    out = []
    while True:
        try:
            st = os.stat(path)
            out.append((st.st_dev, st.st_ino))
        except OSError:
            out.append(None)
        up = os.path.dirname(path)
        if up == path:
            return out
        path = up


def _same_files(a: str, b: str) -> str | None:
    ca, cb = _chain(a), _chain(b)
    if ca[0] is not None and ca[0] == cb[0]:
        return "is"
    if cb[0] is not None and cb[0] in ca[1:]:
        return "lies inside"
    if ca[0] is not None and ca[0] in cb[1:]:
        return "contains"
    return None


def refuse_overlap(out: str, shards: list[str], what: str = "output folder") -> None:
    """An output that is, contains or lies inside an input shard folder could destroy the input."""
    for d in sorted(input_folders(shards)):
        rel = related(out, d)
        if rel:
            raise RecaptionError(f"{what} {out} {rel} the input shard folder {_show(d)}; "
                                 "choose a folder outside the input")


def refuse_annotation_overlap(out: str, ann_dir: str) -> None:
    """Mix output into the annotation folder (or below it) would mix shards and annotation files."""
    rel = related(out, ann_dir)
    if rel in ("is", "lies inside"):
        raise RecaptionError(f"output folder {out} {rel} the annotation folder {ann_dir}; "
                             "choose an --out outside it")


def _show(n: str) -> str:
    return n[len("file://"):] if n.startswith("file://") else n


# -- the lock ------------------------------------------------------------------------------------
# normalized folder -> this process's hold on it: the thread that holds it may enter again (a run
# holds its folder, then its mix enters it); another thread is another run
_HELD: dict[str, dict] = {}


@contextlib.contextmanager
def locked(folder: str):
    """Hold `folder`'s lock (`_recaption.lock`: pid, host, start time) while the block writes there.

    A lock whose process is gone (its pid dead on this host) is named in a warning and taken
    over; a live one is refused in one line naming its pid, host and start. Locally the lock is
    created exclusively (O_EXCL); on object stores, which have no exclusive create, it is an
    object written then read back, and checked before each file is committed (best effort). The
    same process may enter a folder it holds again."""
    key = normalize(folder)
    if key in _HELD and _HELD[key]["thread"] != threading.get_ident():
        raise RecaptionError(f"{folder} is being written by another run in this process (another thread)")
    if key in _HELD:
        _HELD[key]["depth"] += 1
        try:
            yield
        finally:
            _HELD[key]["depth"] -= 1
        return
    fs, path = fs_for(folder)
    created = not fs.exists(path)
    me = _acquire(folder, fs)
    _HELD[key] = {"depth": 1, "token": me["token"], "thread": threading.get_ident()}
    guard = None
    if is_object_store(fs):
        guard = atomic.add_commit_check(path, lambda: _still_ours(folder, me))
    try:
        yield
    finally:
        del _HELD[key]
        if guard is not None:
            atomic.remove_commit_check(guard)
        _release(folder, me, fs, created)


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "process_start": _process_start(os.getpid()), "token": uuid.uuid4().hex}


def _process_start(pid: int) -> str | None:
    """When a process started (Linux: /proc/PID/stat), so a reused pid is not taken for the holder."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _read_lock(url: str) -> dict | None:
    """A lock's content; None where it is gone; {} where it cannot be read (being written)."""
    for _ in range(20):
        try:
            text = read_text(url)
        except FileNotFoundError:
            return None
        try:
            lock = json.loads(text)
            if isinstance(lock, dict) and "pid" in lock:
                return lock
        except ValueError:
            pass
        time.sleep(0.05)  # created, not yet written
    return {}


def _stale(lock: dict) -> bool:
    """The holder ran on this host and runs no longer (its pid is dead, or is another process now)."""
    if lock.get("host") != socket.gethostname() or not isinstance(lock.get("pid"), int):
        return False
    if not atomic._alive(lock["pid"]):
        return True
    start = _process_start(lock["pid"])
    return bool(lock.get("process_start") and start and start != lock["process_start"])


def _holder(lock: dict) -> str:
    return f"pid {lock.get('pid')} on {lock.get('host')}, started {lock.get('started')}"


def _busy(folder: str, lock: dict):
    if not lock:
        return RecaptionError(f"{folder} is locked by {join(folder, LOCK)}, which is not a recaption lock "
                              "this version can read; remove it if no recaption run writes there")
    return RecaptionError(f"{folder} is being written by another recaption run ({_holder(lock)}); wait for it to "
                          f"finish, or, if that run is gone, remove {join(folder, LOCK)}")


def _acquire(folder: str, fs) -> dict:
    me = _me()
    url = join(folder, LOCK)
    makedirs(folder)
    if not is_local(fs):
        return _acquire_remote(folder, url, me)
    path = fs_for(url)[1]
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            lock = _read_lock(url)
            if lock is None:
                continue  # released meanwhile
            if not _stale(lock):
                raise _busy(folder, lock) from None
            _take_over(folder, path, lock)
            continue
        except OSError as e:
            raise RecaptionError(f"cannot lock {folder}: {e.strerror or e}") from e
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return me
    raise RecaptionError(f"cannot lock {folder}: {url} keeps changing; is another recaption run starting there?")


def _take_over(folder: str, path: str, lock: dict) -> None:
    """Move a dead run's lock aside (a rename: of two runs taking it over, one wins) and remove it."""
    aside = f"{path}.{uuid.uuid4().hex[:8]}.stale"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another run took it over first
    try:
        with open(aside) as f:
            moved = json.load(f)
    except (OSError, ValueError):
        moved = {}
    if moved.get("token") != lock.get("token"):  # not the lock judged stale: a run that just took it
        with contextlib.suppress(OSError):
            os.link(aside, path)
        os.unlink(aside)
        raise _busy(folder, moved)
    os.unlink(aside)
    log.warning("%s: taking over the lock of a recaption run that is no longer running (%s)", folder, _holder(lock))


def _acquire_remote(folder: str, url: str, me: dict) -> dict:
    lock = _read_lock(url)
    if lock is not None:
        if not _stale(lock):
            raise _busy(folder, lock)
        log.warning("%s: taking over the lock of a recaption run that is no longer running (%s)", folder,
                    _holder(lock))
    write_text(url, json.dumps(me))
    now = _read_lock(url)
    if not now or now.get("token") != me["token"]:  # another run wrote its lock at the same moment
        raise _busy(folder, now or {})
    return me


def _still_ours(folder: str, me: dict) -> None:
    lock = _read_lock(join(folder, LOCK))
    if not lock or lock.get("token") != me["token"]:
        raise RecaptionError(f"{folder}: another recaption run took this folder's lock "
                             f"({_holder(lock) if lock else 'lock removed'}); this run stops writing there")


def _release(folder: str, me: dict, fs, created: bool) -> None:
    url = join(folder, LOCK)
    with contextlib.suppress(Exception):
        lock = _read_lock(url)
        if lock and lock.get("token") == me["token"]:
            remove(url)
        if created and is_local(fs) and not fs.ls(fs_for(folder)[1]):
            fs.rmdir(fs_for(folder)[1])  # the lock made the folder and nothing else was written: leave none


# -- records ---------------------------------------------------------------------------------
def read_record(folder: str) -> dict | None:
    """The folder's `_recaption.json`, or None where recaption never claimed it."""
    p = join(folder, RECORD)
    if not exists(p):
        return None
    try:
        rec = json.loads(read_text(p))
    except ValueError as e:
        raise RecaptionError(f"{p} is not valid JSON ({e}); it is recaption's record of this folder") from None
    return rec if isinstance(rec, dict) else None


def write_record(folder: str, record: dict) -> None:
    """Write the record atomically (it is the folder's claim)."""
    record = {"format_version": FORMAT_VERSION} | record
    write_text(join(folder, RECORD), json.dumps(record, indent=2, sort_keys=True, default=str))


def _canonical(x) -> str:
    return json.dumps(x, sort_keys=True, default=str)


# Names recaption writes in an output folder; a folder recaption did not claim that holds any of
# them is refused even with --overwrite, since those files were someone else's.
def _looks_like_ours(name: str) -> bool:
    return name.endswith((".tar", ".parquet", "_stats.json")) or name in ("_summary.json", "_decisions")


def claim_output(out_dir: str, kind: str, identity: dict, overwrite: bool, *,
                 hint_same_annotations: bool = False, owned=None, left: list | None = None) -> dict:
    """Claim `out_dir` for a run with `identity`; returns the record. Resumes a run with the same
    identity; replaces one with another identity only with `overwrite`, removing only its files
    (`remove_recorded`: `owned` and `left` as there)."""
    rec = read_record(out_dir)
    if rec is None:
        _refuse_foreign_files(out_dir)
    elif rec.get("kind") != kind or _canonical(rec.get("identity")) != _canonical(identity):
        if not overwrite:
            what = f"another run's files (different settings: {differences(rec.get('identity'), identity)})"
            if rec.get("kind") == "annotations":
                what = "annotation files"
            elif rec.get("kind") != kind and "overlay" in (kind, rec.get("kind")):
                what = "a mix overlay (decisions, no shards)" if rec.get("kind") == "overlay" else "mixed shards"
            tail = ("; only the mix settings differ, so --overwrite redoes the mix and keeps the annotations"
                    if hint_same_annotations else "")
            raise RecaptionError(f"{out_dir} holds {what}; to resume that run, repeat its command; to replace "
                                 f"it, add --overwrite; or choose another --out{tail}")
        if rec.get("kind") == "annotations":
            raise RecaptionError(f"{out_dir} is an annotation folder; --overwrite does not turn it into an "
                                 "output folder: choose another --out")
        remove_recorded(out_dir, rec, nested=True, owned=owned, left=[] if left is None else left)
        rec = None
    makedirs(out_dir)
    if rec is None:
        rec = {"kind": kind, "identity": identity, "written": []}
        write_record(out_dir, rec)
    # a killed run's temporaries, here and in the folders it records (the decisions)
    for folder in [out_dir] + [join(out_dir, n) for n in recorded_folders(rec)]:
        if exists(folder):
            remove_stale_temps(folder)
    return rec


def recorded_folders(rec: dict) -> list[str]:
    """The folders a record's names lie in or name (`_decisions`), once each, in order; never one
    outside the folder (an edited record's `../NAME`)."""
    names = [n for n in rec.get("written", []) if not any(p in ("", ".", "..") for p in n.split("/"))]
    out = [n for n in names if "." not in n and "/" not in n]
    out += [n.rsplit("/", 1)[0] for n in names if "/" in n]
    return list(dict.fromkeys(out))


def _names(folder: str) -> list[str] | None:
    """Names in a folder; None when it does not exist yet."""
    fs, path = fs_for(folder)
    if not fs.exists(path):
        return None
    if not fs.isdir(path):
        raise RecaptionError(f"{folder} exists and is not a folder")
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]


def _refuse_foreign_files(out_dir: str) -> None:
    foreign = sorted(n for n in _names(out_dir) or [] if _looks_like_ours(n))
    if foreign:
        raise RecaptionError(f"{out_dir} already holds files recaption did not write there ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}); choose an empty --out")


def record_written(out_dir: str, rec: dict, names: list[str]) -> None:
    """Add names to the record before they are written, so --overwrite can remove them later. A
    file already at a name the record does not list is not recaption's: refused in one line, never
    written over (a name inside a folder an older record lists whole is that folder's)."""
    new = [n for n in names if n not in set(rec.get("written", []))]
    whole = set(recorded_folders(rec)) & set(rec.get("written", []))
    held: dict = {}  # each folder listed once, not a request a name (an object store's folders)
    for parent in dict.fromkeys(n.rpartition("/")[0] for n in new if n.split("/", 1)[0] not in whole):
        held[parent] = set(_names(join(out_dir, parent) if parent else out_dir) or [])
    theirs = [n for n in new if n.split("/", 1)[0] not in whole and n.rpartition("/")[2] in held[n.rpartition("/")[0]]]
    if theirs:
        raise RecaptionError(f"{join(out_dir, theirs[0])} is not a file recaption wrote (the folder's record does not "
                             "list it), so it is never written over; move it away, or choose another --out")
    if new:
        rec["written"] = list(rec.get("written", [])) + new
        write_record(out_dir, rec)


def remove_summary(out_dir: str) -> None:
    """`_summary.json` marks a finished run (readers of an overlay wait for it); a run starting
    again in the folder takes it away until it has finished."""
    p = join(out_dir, "_summary.json")
    if exists(p):
        remove(p)


def remove_recorded(out_dir: str, rec: dict, nested: bool = False, owned=None, left: list | None = None) -> int:
    """Remove the files a record lists (and nothing else); returns how many were removed. Names
    are plain, or with `nested` (a report's `img/SHARD/KEY.jpg`, a mix's `_decisions/NAME.parquet`)
    relative paths without `..`; a folder a nested file leaves empty goes too. A recorded folder
    (older mix records name `_decisions` whole) is never removed with what else it holds: only its
    files that `owned(url)` says recaption wrote, and recaption's own temporaries, go; the folder
    goes when that leaves it empty, else it stays. Given `left` (a folder being replaced whole),
    every file left in such a folder, or in a folder of recorded files, is named in a warning and
    appended to it."""
    fs, path = fs_for(out_dir)
    n = 0
    names = rec.get("written", [])
    folders, parents = [], []
    for name in names:
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts) or (len(parts) > 1 and not nested):
            continue  # anything else is not ours to follow
        p = f"{path.rstrip('/')}/{name}"
        if fs.isdir(p):
            folders.append(name)  # after the files recorded inside it
            continue
        if fs.exists(p):
            fs.rm(p)
            n += 1
        for up in range(len(parts) - 1, 0, -1):  # the folders it was in, where now empty
            d = f"{path.rstrip('/')}/{'/'.join(parts[:up])}"
            parents.append("/".join(parts[:up]))
            with contextlib.suppress(Exception):
                if fs.isdir(d) and not fs.ls(d, detail=False):
                    fs.rmdir(d)
    for name in folders:
        n += _remove_folder(out_dir, name, owned, left)
    if left is not None:  # what is left in the folders of recorded files: recaption's temporaries go
        for name in dict.fromkeys(parents):
            if name not in folders and fs.isdir(f"{path.rstrip('/')}/{name}"):
                n += _remove_folder(out_dir, name, None, left)
    return n


def _left_in(out_dir: str, name: str, bases: list[str], left: list | None) -> None:
    """Warn that folder `name` stays, holding files recaption did not write; note them in `left`."""
    if not bases:
        return
    theirs = [f"{name}/{b}" for b in bases]
    log.warning("%s: left %s in place: %s not written by recaption (%s%s)", out_dir, name,
                "it holds files" if len(theirs) > 1 else "it holds a file", ", ".join(theirs[:3]),
                ", ..." if len(theirs) > 3 else "")
    if left is not None:
        left += theirs


def _remove_folder(out_dir: str, name: str, owned, left: list | None) -> int:
    """A recorded folder's own files (`owned`, recaption's temporaries), then the folder where empty."""
    path_url = join(out_dir, name)
    fs, path = fs_for(path_url)
    n, theirs = 0, []
    for p in sorted(fs.ls(path, detail=False)):
        base = p.rstrip("/").rsplit("/", 1)[-1]
        if not fs.isdir(p) and (atomic.TEMP.match(base) or (owned is not None and owned(join(path_url, base)))):
            fs.rm(p)
            n += 1
        else:
            theirs.append(base)
    if theirs:
        _left_in(out_dir, name, theirs, left)
    else:
        with contextlib.suppress(Exception):
            fs.rmdir(path)
    return n


# -- report folders ----------------------------------------------------------------------------
def claim_report(out_dir: str, identity: dict) -> dict:
    """Claim `out_dir` for a report: a new or empty folder, or one recaption wrote a report into
    (an earlier report is replaced: `publish` removes the files of it this one does not write
    again). Any other folder is refused in one line."""
    rec = read_record(out_dir)
    if rec is None:
        theirs = sorted(n for n in _names(out_dir) or [] if n != LOCK)
        if theirs:
            raise RecaptionError(f"{out_dir} already holds files recaption did not write there ({', '.join(theirs[:3])}"
                                 f"{', ...' if len(theirs) > 3 else ''}); choose a new or empty --out for the report")
        rec = {"kind": "report", "identity": identity, "written": []}
    elif rec.get("kind") != "report":
        raise RecaptionError(f"{out_dir} is recaption's {rec.get('kind')} folder, not a report's; "
                             "choose another --out for the report")
    makedirs(out_dir)
    for folder in {out_dir, *(join(out_dir, n) for n in recorded_folders(rec))}:
        if exists(folder):
            remove_stale_temps(folder)
    rec = {**rec, "identity": identity}
    write_record(out_dir, rec)
    return rec


def publish(out_dir: str, rec: dict, files: dict[str, bytes], last: str | None = None) -> None:
    """Write `files` (relative name -> bytes) into a claimed folder, each whole, every name recorded
    before it is written and `last` written last; then remove the recorded files of an earlier
    write that this one did not write again, and record only this one's."""
    for name in files:
        _plain_relative(name)
    before = list(rec.get("written", []))
    record_written(out_dir, rec, list(files))
    for name in sorted(files, key=lambda n: n == last):
        if "/" in name:
            makedirs(join(out_dir, name.rsplit("/", 1)[0]))
        atomic.write_bytes(join(out_dir, name), files[name])
    gone = {"written": [n for n in before if n not in files]}
    remove_recorded(out_dir, gone, nested=True)
    rec["written"] = list(files)
    write_record(out_dir, rec)


def _plain_relative(name: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise RecaptionError(f"internal: {name!r} is not a plain name inside its folder")
    return name


# -- annotation folders ----------------------------------------------------------------------
def compare_settings(recorded, wanted, added=()) -> tuple[bool, list[str]]:
    """Whether a group's recorded settings are the wanted ones, and which of `added` (keys later
    versions record) `wanted` has and `recorded` lacks: an older folder cannot tell those, so the
    two are the same only as far as is known (the rest agrees) and the unknown keys say so."""
    unknown = [k for k in added if isinstance(recorded, dict) and isinstance(wanted, dict)
               and k in wanted and k not in recorded]
    rest = {k: v for k, v in wanted.items() if k not in unknown} if unknown else wanted
    return _canonical(recorded) == _canonical(rest), unknown


def claim_annotations(ann_dir: str, wanted: dict[str, dict], overwrite: bool,
                      dependents: dict[str, set] | None = None, added: dict[str, tuple] | None = None) -> dict:
    """Claim column groups of an annotation folder: `wanted` maps group -> settings. A group already
    written there with other settings is refused unless `overwrite`; `dependents` (group -> groups
    computed from it) says which recorded groups new values make stale; `added` (group -> settings
    keys older versions did not record) which recorded groups are the same only as far as is
    known: those resume with a warning and are redone with `overwrite`. The record then holds the
    settings the files written from now on hold, and under `UNRECORDED` the keys older files of
    the group lack, so a later run with other values of those keys is refused here, up front.
    Returns the groups in force."""
    rec = read_record(ann_dir)
    if rec is not None and rec.get("kind") != "annotations":
        raise RecaptionError(f"{ann_dir} is a mixed output folder, not an annotation folder")
    if rec is None:
        _refuse_foreign_annotations(ann_dir)
    groups = dict((rec or {}).get("groups") or {})
    older = {g: list(keys) for g, keys in ((rec or {}).get(UNRECORDED) or {}).items() if g in groups}
    compared = {g: compare_settings(groups[g], s, (added or {}).get(g, ())) for g, s in wanted.items() if g in groups}
    clash = [g for g, (same, _) in compared.items() if not same]
    unknown = {g: list(dict.fromkeys(older.get(g, []) + keys)) for g, (same, keys) in compared.items()
               if same and (keys or g in older)}
    for g, keys in unknown.items():
        log.warning("%s holds %s recorded without %s (an older recaption wrote them): whether they were made with "
                    "these is unknown; %s", ann_dir, g, " and ".join(keys),
                    "--overwrite redoes them" if overwrite else "resuming as if they were (--overwrite redoes them)")
    if overwrite:
        clash += list(unknown)
    if clash and not overwrite:
        g = clash[0]
        raise RecaptionError(
            f"{ann_dir} holds {g} written with other settings ({differences(groups[g], wanted[g])}); "
            "to resume that run, repeat its command; to replace them, add --overwrite; or choose another folder")
    for g in wanted:
        if g in clash or g not in groups:
            for dep in (dependents or {}).get(g, ()):  # e.g. scores of other captions no longer hold
                if dep not in wanted:
                    groups.pop(dep, None)
                    older.pop(dep, None)
    groups.update(wanted)  # what the files written now record; `older` says which keys the others lack
    older |= unknown  # kept through --overwrite until every file is redone (`settle_unrecorded`)
    makedirs(ann_dir)
    for folder in (ann_dir, *embedding_folders(ann_dir)):
        remove_stale_temps(folder)
    if (rec is None or _canonical(rec.get("groups")) != _canonical(groups)
            or _canonical(rec.get(UNRECORDED) or {}) != _canonical(older)):
        write_record(ann_dir, {"kind": "annotations", "groups": groups} | ({UNRECORDED: older} if older else {}))
    return groups


def settle_unrecorded(ann_dir: str, redone: list[str], groups) -> None:
    """After an --overwrite pass of `groups` that redid shards `redone` (names) without a failure:
    where they are every annotation file of the folder, none lacks those groups' settings keys any
    more, so the record stops saying some do (other groups' entries stay)."""
    rec = read_record(ann_dir)
    older = dict((rec or {}).get(UNRECORDED) or {})
    if not any(g in older for g in groups):
        return
    files = {n[:-len(".parquet")] for n in _names(ann_dir) or [] if n.endswith(".parquet") and not n.startswith(".")}
    if files <= set(redone):
        older = {g: keys for g, keys in older.items() if g not in groups}
        kept = {k: v for k, v in rec.items() if k not in (UNRECORDED, "format_version")}
        write_record(ann_dir, kept | ({UNRECORDED: older} if older else {}))


def embedding_folders(ann_dir: str) -> list[str]:
    """The folders of an annotation folder's embedding files (`recaption.io.embeddings`) that exist."""
    from recaption.io.embeddings import FOLDER

    return [f for f in (join(ann_dir, f"{FOLDER}/img_emb"), join(ann_dir, f"{FOLDER}/metadata")) if exists(f)]


def _refuse_foreign_annotations(ann_dir: str) -> None:
    if any(shard_suffix(n) for n in _names(ann_dir) or []):
        raise RecaptionError(f"{ann_dir} holds shards (*.tar, *.tar.gz); annotation files go in a folder of their own")


def differences(was, now, most: int = 4) -> str:
    """What differs between two settings, key by key (`decoding.num_captions 2 -> 3`), the first
    few; nested keys are dotted."""
    def flat(x, pre=""):
        if isinstance(x, dict) and x:
            out = {}
            for k, v in x.items():
                out |= flat(v, f"{pre}{k}.")
            return out
        return {pre.rstrip("."): x}

    a, b = flat(was or {}), flat(now or {})
    gone = object()  # a key one side lacks (unlike a key set to null)
    keys = [k for k in dict.fromkeys([*a, *b]) if k not in a or k not in b or _canonical(a[k]) != _canonical(b[k])]
    parts = [f"{k} {_short(a.get(k, gone))} -> {_short(b.get(k, gone))}" for k in keys[:most]]
    return ", ".join(parts + ([f"and {len(keys) - most} more"] if len(keys) > most else [])) or "none shown"


def _short(v) -> str:
    text = "null" if v is None else "unset" if not isinstance(v, (str, int, float, bool, list, dict)) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."
