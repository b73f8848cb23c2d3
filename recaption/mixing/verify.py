"""`recaption verify FOLDER`: does a mix (or overlay) folder still agree with its record and its
inputs? Every check reads what the folder recorded, never re-decides a row:

* the run finished (`_summary.json`) and recaption wrote the folder (`_recaption.json`);
* each input shard is the one the mix read (size, mtime or ETag in its decisions file), and the
  columns the mix read from each annotation file are as they were (`annotation_digest`);
* each output shard's stats name decisions files as they are now (`built_from`), its tar and parquet
  hold the same keys in order, and those are its parts' kept samples;
* every kept sample is in exactly one output shard, every other row of the decisions in
  `_dropped.parquet`, and the summary's counts are those of the files.

An annotation folder is checked file by file: readable, one row a key, and with `shards` given,
each file's recorded shard identity against the shard now.
"""
from __future__ import annotations

import json
import tarfile
from collections import Counter

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io import tarindex
from recaption.io.atomic import exists, join, listdir, read_text
from recaption.io.fs import open_url
from recaption.io.shards import split_member
from recaption.io.sources import shard_name
from recaption.mixing import provenance
from recaption.mixing.plan import FOLDER, META_KEY, listed_decisions

MIX_KINDS = ("mix", "run", "overlay")
MOST = 20  # problems listed before the rest are counted


def verify(folder: str, shards: list[str] | None = None) -> list[str]:
    """What disagrees in `folder`, one line each (empty: it holds)."""
    from recaption.io.folders import read_record

    rec = read_record(folder)
    if rec is None:
        raise RecaptionError(f"{folder}: no _recaption.json: not a folder recaption wrote")
    if rec.get("kind") in MIX_KINDS:
        return _mix(folder, rec)
    return _annotations(folder, shards)


def _mix(folder: str, rec: dict) -> list[str]:
    out: list[str] = []
    if not exists(join(folder, "_summary.json")):
        return [f"{folder}: no _summary.json: the run did not finish (re-run the same command)"]
    summary = json.loads(read_text(join(folder, "_summary.json")))
    dec_dir = join(folder, FOLDER)
    names = sorted(n for n in listdir(dec_dir) if n.endswith(".parquet") and not n.startswith("."))
    listed = listed_decisions(rec)  # a file the record does not list is not the mix's (a user's own)
    names = [n for n in names if listed is None or n.removesuffix(".parquet") in listed]
    digests, kept_keys, dropped = {}, {}, Counter()
    n_kept = 0
    for n in names:
        path = join(dec_dir, n)
        with open_url(path, "rb") as f:
            data = f.read()
        digests[n] = provenance.decisions_digest(data)
        t = ann.read_table(path, columns=["key", "kept"])
        meta = json.loads(t.schema.metadata[META_KEY])
        keys = t["key"].to_pylist()
        kept = t["kept"].to_pylist()
        kept_keys[n] = [k for k, y in zip(keys, kept) if y]
        n_kept += len(kept_keys[n])
        dropped[meta["shard"]] = sum(1 for y in kept if not y)
        out += _inputs(meta, path)
    out += _dropped(folder, dropped)
    counts = summary.get("counts") or {}
    if counts.get("written") is not None and counts["written"] != n_kept:
        out.append(f"_summary.json says {counts['written']} kept, the decisions keep {n_kept}")
    if rec.get("kind") != "overlay" and not summary.get("overlay"):
        out += _outputs(folder, digests, kept_keys, summary)
    return out


def _inputs(meta: dict, path: str) -> list[str]:
    """The input shard and annotation file a decisions file was made from, as they are now."""
    out = []
    url = meta.get("input")
    try:
        change = tarindex.change(tarindex.identity(url), meta)
    except (FileNotFoundError, OSError):
        return [f"{url}: the input shard is gone ({path})"]
    if change is not None and change != tarindex.NO_STAMP:
        out.append(f"{url} changed since the mix ({change}): re-run the mix")
    a, cols = meta.get("annotations"), meta.get("annotation_columns")
    if a and cols and meta.get("annotation_digest"):
        if not exists(a):
            out.append(f"{a}: the annotation file is gone")
        elif provenance.annotation_digest(a, cols) != meta["annotation_digest"]:
            out.append(f"{a} changed since the mix (the columns it read): re-run the mix")
    return out


def _dropped(folder: str, want: Counter) -> list[str]:
    path = join(folder, "_dropped.parquet")
    if not exists(path):
        return ["_dropped.parquet is missing"]
    t = ann.read_table(path, columns=["shard"])
    got = Counter(t["shard"].to_pylist())
    return [f"_dropped.parquet holds {got.get(s, 0)} rows of {s}, its decisions drop {n}"
            for s, n in sorted(want.items()) if got.get(s, 0) != n]


def _outputs(folder: str, digests: dict, kept_keys: dict, summary: dict) -> list[str]:
    """Each output shard against its stats and the decisions it names; every kept sample once."""
    out = []
    placed = {n: [0] * len(k) for n, k in kept_keys.items()}
    stats_names = sorted(n for n in listdir(folder) if n.endswith("_stats.json"))
    written = 0
    for sn in stats_names:
        name = sn[: -len("_stats.json")]
        stats = json.loads(read_text(join(folder, sn)))
        tar_keys = _tar_keys(join(folder, f"{name}.tar"))
        if tar_keys is None:
            out.append(f"{name}.tar is missing or unreadable")
            continue
        pq_keys = ann.read_table(join(folder, f"{name}.parquet"), columns=["key"])["key"].to_pylist()
        written += len(tar_keys)
        if tar_keys != pq_keys:
            out.append(f"{name}.tar and {name}.parquet hold different samples")
        if stats.get("count") != len(tar_keys):
            out.append(f"{name}_stats.json counts {stats.get('count')}, {name}.tar holds {len(tar_keys)}")
        parts = stats.get("parts")
        if not parts:
            out.append(f"{name}_stats.json records no parts (written before provenance): re-run the mix")
            continue
        want = []
        for p in parts:
            d = p["decisions"] + ".parquet"
            if digests.get(d) != p.get("digest"):
                out.append(f"output shard {name} was built from other decisions than {FOLDER}/{d} holds now: "
                           "re-run the mix")
                continue
            want += kept_keys[d][p["start"] : p["end"]]
            for i in range(p["start"], min(p["end"], len(placed[d]))):
                placed[d][i] += 1
        if want and want != tar_keys:
            out.append(f"{name}.tar does not hold its parts' kept samples in order")
    for d, marks in sorted(placed.items()):
        twice, none = sum(1 for m in marks if m > 1), sum(1 for m in marks if m == 0)
        if twice:
            out.append(f"{twice} kept samples of {shard_name(d)} are in more than one output shard")
        if none:
            out.append(f"{none} kept samples of {shard_name(d)} are in no output shard")
    if summary.get("written") is not None and summary["written"] != written:
        out.append(f"_summary.json says {summary['written']} written, the tars hold {written}")
    return out


def _tar_keys(path: str) -> list[str] | None:
    """The sample keys of an output tar, in order (one per run of members)."""
    if not exists(path):
        return None
    keys: list[str] = []
    try:
        with open_url(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tf:
            for m in tf:
                split = split_member(m.name)
                key = m.name if split is None else split[0]
                if not keys or keys[-1] != key:
                    keys.append(key)
    except (tarfile.TarError, OSError):
        return None
    return keys


def _annotations(folder: str, shards: list[str] | None) -> list[str]:
    out = []
    by_name = {shard_name(u): u for u in shards or []}
    files = sorted(n for n in listdir(folder) if n.endswith(".parquet") and not n.startswith("."))
    if not files:
        return [f"{folder}: no annotation files"]
    for n in files:
        path = join(folder, n)
        try:
            keys = ann.read_table(path, columns=["key"])["key"].drop_null().to_pylist()
        except Exception as e:
            out.append(f"{path}: cannot be read ({type(e).__name__}: {e})")
            continue
        twice = [k for k, c in Counter(keys).items() if c > 1]
        if twice:
            out.append(f"{path}: key {twice[0]!r} has more than one row")
        url = by_name.get(n[: -len(".parquet")])
        recorded = provenance.recorded_identity(path)
        if url and recorded:
            change = tarindex.change(tarindex.identity(url), recorded)
            if change is not None and change != tarindex.NO_STAMP:
                out.append(f"{url} changed since it was annotated ({change})")
    return out
