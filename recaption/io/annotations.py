"""The SPEC 2 annotation parquet: one file per input shard, one row per sample, fixed schema."""
from __future__ import annotations

import io

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from recaption.io.atomic import atomic_open, join

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("shard", pa.string()),
    ("raw_caption", pa.string()),
    ("captions", pa.list_(pa.string())),
    ("captioner", pa.string()),
    ("clip_raw", pa.float32()),
    ("clip_captions", pa.list_(pa.float32())),
    ("sieve", pa.float32()),
    ("sieve_mean", pa.float32()),
    ("sieve_best", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
])
COLUMNS = SCHEMA.names
SCORE_COLUMNS = ("clip_raw", "clip_captions", "sieve", "sieve_mean", "sieve_best")


def empty_row(key, shard, raw_caption=None) -> dict:
    return {c: None for c in COLUMNS} | {
        "key": key, "shard": shard, "raw_caption": raw_caption, "captions": [], "clip_captions": [],
        "status": "ok",
    }


def error_row(key, shard, error: str, raw_caption=None) -> dict:
    return empty_row(key, shard, raw_caption) | {"status": "error", "error": error}


def path_for(ann_dir: str, shard: str) -> str:
    return join(ann_dir, f"{shard}.parquet")


def to_table(rows: list[dict]) -> pa.Table:
    extra = [k for k in (rows[0] if rows else {}) if k not in COLUMNS]
    cols = {c: [r.get(c) for r in rows] for c in COLUMNS}
    t = pa.Table.from_pydict(cols, schema=SCHEMA)
    for k in extra:
        t = t.append_column(k, pa.array([r.get(k) for r in rows]))
    return t


def write(url: str, rows: list[dict]) -> None:
    """Write the whole file atomically: a parquet that exists is a finished shard."""
    buf = io.BytesIO()
    pq.write_table(to_table(rows), buf, compression="zstd")
    with atomic_open(url) as f:
        f.write(buf.getvalue())


def read(url: str, columns: list[str] | None = None) -> pa.Table:
    with fsspec.open(url, "rb") as f:
        t = pq.read_table(f, columns=columns)
    missing = [c for c in (columns or COLUMNS) if c not in t.column_names]
    if missing:
        from recaption.errors import RecaptionError

        raise RecaptionError(f"{url} is not a recaption annotation file (missing columns {missing})")
    return t


def read_rows(url: str) -> list[dict]:
    return read(url).to_pylist()


def is_scored(t: pa.Table, need_clip: bool, need_sieve: bool) -> bool:
    """True when every ok row with captions already carries the requested scores."""
    rows = t.select(["status", "raw_caption", "captions", "clip_raw", "sieve"]).to_pylist()
    for r in rows:
        if r["status"] != "ok":
            continue
        if need_clip and r["clip_raw"] is None and r["raw_caption"] is not None:
            return False
        if need_sieve and r["sieve"] is None and r["raw_caption"] is not None and r["captions"]:
            return False
    return True
