"""The mix-write stage: one output shard of a mix, written from its plan.

The plan (`recaption.mixing.plan`) names slices of input shards' kept samples; what each kept
sample gets (caption, source, scores) is read from the shard's decisions file, never decided
again. Where the decisions carry the shard's member index, the samples are copied as byte spans
(`recaption.output.spans`) after the shard's size and mtime/ETag are checked against the
decisions' record; otherwise the input tar is read as raw blocks (`recaption.io.tarcopy`), the
slow path. Either way members other than `txt` and `json` (and `syn.txt` for `both`) are copied
byte for byte, headers included, and the output is the same. The parquet beside the tar is built
column by column from the decisions and the fields read from each sample's json.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io import tarindex
from recaption.io.atomic import exists, local_path, read_text
from recaption.io.fs import open_url
from recaption.io.shards import DEFAULT_IMAGE_KEYS, open_shard
from recaption.io.sources import is_gzip_name, shard_name
from recaption.io.tarcopy import BlockWriter, iter_samples
from recaption.io.writer import shard_paths, write_with
from recaption.mixing import provenance
from recaption.mixing.columns import CHOSEN as SYNTHETIC_GROUP  # with several synthetic groups: last in the parquet
from recaption.mixing.plan import META_KEY, OutputPlan, Part, repeated_kept_key
from recaption.mixing.strategies.base import named
from recaption.output import caption_keys, recaption_field, spans
from recaption.output.members import READ, kept_members

PROGRESS_EVERY = 256  # a worker's progress crosses a queue: not a message a sample
# the parquet row of a sample: decisions columns, then where it came from, then its json's fields
DECIDED = ("key", "caption", "caption_source", "raw_caption", "synthetic_caption", "clip_raw", "clip_synthetic",
           "sieve", "blend")
ROW = ("key", "caption", "caption_source", "url", "raw_caption", "synthetic_caption", "clip_raw", "clip_synthetic",
       "sieve", "blend", "source_shard", "status", "error_message", "width", "height", "original_width",
       "original_height", "sha256")


@dataclass
class WriteReport:
    """The outcome of one output shard: done, rewritten (its inputs changed since it was written),
    skipped (written already from the same inputs) or failed."""

    shard: str
    status: str
    samples: int = 0
    error: str | None = None


@dataclass
class _Written:
    """One part as written: its decisions rows, the input shard's name, its json fields."""

    rows: pa.Table
    shard: str
    meta: dict[str, list]


class MixWriteStage:
    """Writes one output shard from its plan; picklable, so any engine can run it."""

    def __call__(self, p, progress=None) -> WriteReport:
        if isinstance(p, dict):
            p = OutputPlan(**{**p, "parts": [Part(**x) for x in p["parts"]]})
        want = provenance.built_from(p)
        before = recorded_build(p.out_dir, p.name)
        if before == want:
            n = sum(x.end - x.start for x in p.parts)
            if progress:
                progress(n)
            return WriteReport(p.name, "skipped", n)
        parts = [asdict(x) | {"decisions": x.decisions.rsplit("/", 1)[-1].removesuffix(".parquet")} for x in p.parts]
        built = {"built_from": want, "parts": parts}
        # a shard whose files were there (its stats removed by hand, a killed run's tar) is rewritten too
        there = before is not None or _any_file(p.out_dir, p.name)
        try:
            with contextlib.ExitStack() as files, _no_cycle_collection():  # shards stay open until the tar closes
                n = write_with(p.out_dir, p.name, lambda tar: self._fill(tar, p, files, progress), built)["count"]
        except Exception as e:
            return WriteReport(p.name, "failed", error=f"{type(e).__name__}: {e}")
        return WriteReport(p.name, "rewritten" if there else "done", n)

    def _fill(self, tar: BlockWriter, p: OutputPlan, files: contextlib.ExitStack, progress) -> pa.Table:
        written, buffers = [], spans.shared()
        level = p.caption_keys
        extra = ((["captions"] if caption_keys.needs_candidates(level) else [])
                 + [caption_keys.GROUPS, caption_keys.TAGS, SYNTHETIC_GROUP])
        # the span path knows the one extra member the built-in strategies write (syn.txt)
        extra_members = tuple(named(p.strategy).extra_members)
        plain = set(extra_members) <= {"syn.txt"}
        for part in p.parts:
            t = ann.read_table(part.decisions, columns=READ + extra + list(tarindex.NAMES))
            _refuse_repeated_keys(t, part, p.name)
            at = np.flatnonzero(t["kept"].to_numpy(zero_copy_only=False))[part.start : part.end]
            rows = t.take(at)  # at most one output shard of rows
            added = recaption_field.encode(rows, p.strategy)
            keys = caption_keys.encode(rows, level)
            meta = json.loads(t.schema.metadata[META_KEY])
            images = _recorded_images(meta, at) if meta.get(provenance.VERIFY_IMAGES) else None
            if plain and images is None and spans.usable(rows) and not is_gzip_name(part.url):
                change = tarindex.change(tarindex.identity(part.url), meta)
                if change is not None:
                    raise RecaptionError(f"{part.url} changed since the mix was planned ({change}); "
                                         "re-annotate it and re-run the mix")
                src = _source(part.url, files)
                fields = spans.write_part(tar, src, rows, p.strategy, added, buffers, progress, PROGRESS_EVERY,
                                          level, keys, extra=extra_members)
            else:
                fields = self._slow(tar, part, at, rows, added, p.strategy, extra_members, progress, level, keys,
                                    images)
            written.append(_Written(rows, shard_name(part.url), fields))
        return output_table(written)

    @staticmethod
    def _slow(tar: BlockWriter, part: Part, at: np.ndarray, rows: pa.Table, added: list[bytes], strategy: str,
              extra: tuple[str, ...], progress, level: str = "none",
              keys: list[bytes] | None = None, images: list | None = None) -> dict[str, list]:
        """The part from a walk over the tar's headers (no member index, or a gzipped shard);
        with `images` (each kept row's recorded image sha256), every image is checked against it."""
        cols = READ + [c for c in ("captions", caption_keys.GROUPS, caption_keys.TAGS) if c in rows.column_names]
        want = dict(zip(at.tolist(), zip(rows.select(cols).to_pylist(), added, keys or [None] * len(added))))
        fields: dict[str, list] = {k: [] for k in spans.META}
        found = 0
        with open_shard(part.url) as f:
            for pos, key, members in iter_samples(f, set(want)):
                row, add, keys_text = want[pos]
                if key != row["key"]:
                    raise RecaptionError(f"{part.url} changed since it was annotated (sample {pos}: "
                                         f"{key!r} vs {row['key']!r}); re-annotate it")
                found += 1
                text = None
                for m in members:
                    if m.field == "json":
                        text = m.data
                if images is not None:
                    _check_image(part.url, key, members, images[found - 1])
                meta, new = kept_members(row, strategy, text, add, level, keys_text, extra=extra)
                for m in members:  # every member in its place, raw; the new ones replace theirs
                    if m.field in new:
                        tar.add(f"{key}.{m.field}", new.pop(m.field))
                    else:
                        tar.member(m)
                for field, data in new.items():  # or follow, in this order
                    tar.add(f"{key}.{field}", data)
                for k, lst in fields.items():
                    lst.append(meta.get(k))
                if progress and found % PROGRESS_EVERY == 0:
                    progress(PROGRESS_EVERY)
        if progress and found % PROGRESS_EVERY:
            progress(found % PROGRESS_EVERY)
        if found != len(want):
            raise RecaptionError(f"{part.url}: {len(want) - found} kept samples could not be read back")
        return fields


def recorded_build(out_dir: str, name: str) -> str | None:
    """What an output shard's stats say it was built from (`provenance.built_from`): None when it
    is not written whole, "" when written before stats recorded it."""
    p = shard_paths(out_dir, name)
    if not (exists(p["stats"]) and exists(p["tar"])):
        return None
    try:
        return json.loads(read_text(p["stats"])).get("built_from") or ""
    except ValueError:
        return ""


def _any_file(out_dir: str, name: str) -> bool:
    """Whether any of an output shard's files (tar, parquet, stats) was there before it was written."""
    return any(exists(p) for p in shard_paths(out_dir, name).values())


def _refuse_repeated_keys(t: pa.Table, part: Part, name: str) -> None:
    """A key kept in two annotation rows cannot say which sample is which: the output shard fails."""
    why = repeated_kept_key(t)
    if why:
        raise RecaptionError(f"{why}; output shard {name} is not written (repair or re-annotate {part.url})")


def _recorded_images(meta: dict, at: np.ndarray) -> list:
    """The image sha256 the annotation file recorded for kept rows `at` (bytes, or None)."""
    t = ann.read_table(meta["annotations"], columns=["image_sha256"]).take(pa.array(at))
    return [None if v is None else bytes.fromhex(v) if isinstance(v, str) else bytes(v)
            for v in t["image_sha256"].to_pylist()]


def _check_image(url: str, key: str, members, want: bytes | None) -> None:
    """A sample's image is the one annotated (a shard whose identity could not prove it unchanged)."""
    images = sorted((DEFAULT_IMAGE_KEYS.index(m.field), m) for m in members if m.field in DEFAULT_IMAGE_KEYS)
    if want is None or not images:
        return
    if hashlib.sha256(images[0][1].data).digest() != want:
        raise RecaptionError(f"{url} changed since it was annotated: sample {key!r}'s image is not the one "
                             "annotated (image_sha256); re-annotate it")


@contextlib.contextmanager
def _no_cycle_collection():
    """Python's cycle collector paused while a shard is written: the write makes no cycles, but
    its many small objects (parsed json, pieces) would set it off, each time walking every object
    of the process (a tenth of the write's time, measured with perf)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _source(url: str, files: contextlib.ExitStack) -> spans.Source:
    path = local_path(url)
    if path is not None:
        src = spans.Source(url, path)
    else:
        src = spans.Source(url, None, files.enter_context(open_url(url, "rb")))
    files.callback(src.close)
    return src


def output_table(parts: list[_Written]) -> pa.Table:
    """The output shard's parquet, one row a sample: what `pa.Table.from_pylist` makes of the rows
    (a column of nulls only has the null type), built a column at a time."""
    n = sum(w.rows.num_rows for w in parts)
    if not n:
        return pa.table({"key": pa.array([], pa.string())})
    cols = {}
    for c in DECIDED:
        col = pa.chunked_array([ch for w in parts for ch in w.rows[c].chunks], parts[0].rows.schema.field(c).type)
        col = col.combine_chunks()
        cols[c] = pa.nulls(n) if col.null_count == n else col
    shards = [w.shard for w in parts for _ in range(w.rows.num_rows)]
    cols |= {"source_shard": pa.array(shards), "status": pa.array(["success"] * n), "error_message": pa.nulls(n)}
    for k in spans.META:
        cols[k] = pa.array([v for w in parts for v in w.meta[k]])
    names = ROW + ((SYNTHETIC_GROUP,) if SYNTHETIC_GROUP in parts[0].rows.column_names else ())
    if SYNTHETIC_GROUP in names:
        col = pa.chunked_array([ch for w in parts for ch in w.rows[SYNTHETIC_GROUP].chunks], pa.string())
        cols[SYNTHETIC_GROUP] = pa.nulls(n) if col.null_count == n else col.combine_chunks()
    return pa.table({c: cols[c] for c in names})
