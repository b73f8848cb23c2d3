"""What each output shard of a mix was built from, so that a re-run rewrites exactly the shards
whose inputs changed, and `recaption verify` can say whether a folder still agrees with them.

* An input shard is checked against the identity its annotation file recorded when the shard was
  first read (size, and mtime or ETag: `io.tarindex.change`) before a mix writes anything: a shard
  rewritten since, or an annotation folder made from other shards with the same names, is one
  line naming the shard and its first sample that differs. A shard whose store reports no mtime or
  ETag (and the same size) cannot be proven unchanged by its identity: its decisions say so
  (`verify_images`) and the writer checks each image against the annotation's `image_sha256`.
* A decisions file's digest is the sha256 of its bytes; the columns of the annotation file that
  the mix read have their own digest in the decisions' metadata (`annotation_digest`), so adding
  another annotator's columns to a file later changes neither.
* An output shard's `built_from` is the digest of its parts (input shard, decisions digest, slice)
  and the strategy and caption keys it writes with; its stats file records it, and a shard whose
  record differs from its plan now is rewritten.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tarfile

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io import tarindex

log = logging.getLogger("recaption")
VERIFY_IMAGES = "verify_images"  # decisions metadata: the writer checks image bytes against image_sha256


def table_digest(t) -> str:
    """sha256 of a table's columns (names and values, chunking and metadata left out)."""
    import pyarrow as pa

    h = hashlib.sha256()
    for name in sorted(t.column_names):
        col = t[name].combine_chunks() if isinstance(t[name], pa.ChunkedArray) else t[name]
        sink = pa.BufferOutputStream()
        one = pa.table({name: col})
        with pa.ipc.new_stream(sink, one.schema) as w:
            w.write_table(one)
        h.update(name.encode() + b"\0" + sink.getvalue().to_pybytes())
    return h.hexdigest()


def annotation_digest(ann_path: str, columns: list[str]) -> str:
    """`table_digest` of the columns a mix read from an annotation file, read as the mix reads them."""
    return table_digest(ann.read(ann_path, columns=columns, threads=False))


def recorded_identity(ann_path: str) -> dict | None:
    """The input shard's identity as its annotation file recorded it (None: not recorded)."""
    meta = ann.read_metadata(ann_path) or {}
    return (meta.get("groups") or {}).get(tarindex.GROUP)


def check_shard(f, cache=None) -> bool:
    """Refuse (one line) an input shard that is not the one its annotation file was made from;
    returns whether only its images can tell (no mtime or ETag to compare). A shard whose identity
    differs but whose samples are the annotated ones, key for key and image for image (a copy, the
    same tar gzipped), is read through to prove it and then used."""
    recorded = recorded_identity(f.path)
    if not recorded or f.url is None:
        return False  # annotated before identities were recorded: the writer compares keys
    change = tarindex.change(tarindex.identity(f.url), recorded)
    if change is None:
        return False
    if change == tarindex.NO_STAMP:
        return True
    where = first_difference(f.url, f.path)
    if where is None:
        log.info("%s differs from its annotation's record (%s) but holds the annotated samples: used", f.url, change)
        return False
    raise RecaptionError(f"{f.url} is not the shard {f.path} was made from ({change}){where}: re-annotate it "
                         "(annotate/score with --overwrite), or give the annotation folder of these shards")


def first_difference(url: str, ann_path: str) -> str | None:
    """", first differing sample KEY (...)" between a shard and its annotation rows, read in order
    (keys, then image sha256 where recorded, then the sha256 of its txt and json); "" when the shard
    cannot be read through; None when every sample is the annotated one. A file annotated before
    the txt and json digests were recorded cannot prove them unchanged: it differs (`NO_DIGESTS`)."""
    from recaption.io.shards import ReadFailure, iter_shard

    cols = ["key", "image_sha256", *tarindex.DIGEST_NAMES]
    with ann.open_parquet(ann_path) as pf:
        have = [c for c in cols if c in pf.schema_arrow.names]
        rows = pf.read(columns=have).to_pylist()
    digested = set(tarindex.DIGEST_NAMES) <= set(have)
    keyed = [r for r in rows if r.get("key") is not None]
    i = 0
    try:
        for s in iter_shard(url):
            if isinstance(s, ReadFailure) and s.key is None:
                break
            if i >= len(keyed):
                return f", first differing sample {s.key!r} (no annotation row)"
            want = keyed[i]
            if s.key != want["key"]:
                return f", first differing sample {s.key!r} (annotated: {want['key']!r})"
            what = _sample_difference(s, want, digested)
            if what:
                return f", first differing sample {s.key!r} ({what})"
            i += 1
    except Exception:  # the shard cannot be read: the identity alone says it changed
        return ""
    if i < len(keyed):
        return f", first differing sample {keyed[i]['key']!r} (annotated, not in the shard)"
    if not digested:
        return f" ({NO_DIGESTS})"
    return None


NO_DIGESTS = ("its txt and json cannot be compared: the annotation file was written before recaption "
              "recorded their sha256")


def _sample_difference(s, want: dict, digested: bool) -> str | None:
    """What of one sample differs from its annotation row: its image, txt or json (None: nothing)."""
    from recaption.io.shards import ReadFailure

    def recorded(v):
        return None if v is None else bytes.fromhex(v) if isinstance(v, str) else bytes(v)

    if isinstance(s, ReadFailure):  # unreadable now: the same only where the row read nothing either
        known = [want.get(c) for c in ("image_sha256", *(tarindex.DIGEST_NAMES if digested else ()))]
        return "it no longer reads" if any(v is not None for v in known) else None
    sha = want.get("image_sha256")
    if sha is not None and s.image_field:
        if hashlib.sha256(s.image_bytes).digest() != recorded(sha):
            return "its image"
    if digested:
        for col, now in tarindex.digests(s.members).items():
            if now != recorded(want.get(col)):
                return f"its {col.removesuffix('_sha256')}"
    return None


NO_ROW = "no annotation row"  # the drop reason of a sample the annotation file does not list


def unannotated(url: str, table) -> list[str]:
    """The keys of samples in the shard that no row of `table` (decisions carrying the member
    index) lists: the tar between and after the rows' spans is walked header by header. A key some
    row has is that row's (a sample read without an index, a member after a cut, a key the shard
    repeats: annotate recorded those as rows of their own); after a shard-level error row (the
    shard broke there) the rest of the tar is that row's."""
    from recaption.io import arrays
    from recaption.io.fs import open_url
    from recaption.io.tarcopy import sample_keys_between

    off, has = arrays.ints(table["tar_offset"])
    size, _ = arrays.ints(table["tar_size"])
    listed = set(table["key"].drop_null().to_pylist())
    spans = sorted(zip(off[has].tolist(), size[has].tolist()))
    gaps, pos = [], 0
    for o, n in spans:
        if o > pos:
            gaps.append((pos, o))
        pos = max(pos, o + n)
    if table["key"].null_count == 0:  # a keyless row is the shard breaking: what follows is its to tell
        gaps.append((pos, None))
    out = []
    with open_url(url, "rb") as f:
        for a, b in gaps:
            try:
                found = sample_keys_between(f, a, b)
            except (tarfile.TarError, OSError, ValueError):  # the tar breaks there: its rows say so already
                break
            out += [k for k in found if k not in listed and k not in out]
    return out


def with_unannotated(table, keys: list[str]):
    """Decisions `table` with a dropped row for each sample in `keys` (reason `NO_ROW`), last."""
    import pyarrow as pa

    n = len(keys)
    cols = {}
    for field in table.schema:
        if field.name == "key":
            cols["key"] = pa.array(keys, field.type)
        elif field.name == "kept":
            cols["kept"] = pa.array([False] * n, field.type)
        elif field.name == "reason":
            cols["reason"] = pa.array([NO_ROW] * n, field.type)
        else:
            cols[field.name] = pa.nulls(n, field.type)
    extra = pa.table(cols, schema=table.schema.remove_metadata())
    return pa.concat_tables([table.replace_schema_metadata(None), extra]).replace_schema_metadata(table.schema.metadata)


def built_from(plan) -> str:
    """The digest an output shard's stats record: its parts and how they are written."""
    parts = [[p.url, p.digest, p.start, p.end] for p in plan.parts]
    body = json.dumps({"strategy": plan.strategy, "caption_keys": plan.caption_keys, "parts": parts},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def decisions_digest(data: bytes) -> str:
    """The digest of a decisions file's bytes (its parts name it)."""
    return hashlib.sha256(data).hexdigest()
