"""The annotation parquet: one file per input shard, one row per sample, a fixed schema.

Each file also records, in its parquet metadata, the format version and the settings that wrote
each column group (captions, clip, sieve), so a re-run can tell a finished group from one written
with other settings, and add a missing group instead of skipping the file. Columns, null
rules and metadata: docs/formats.md#annotation-files.
"""
from __future__ import annotations

import contextlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from recaption.io.atomic import atomic_open, join, local_path, open_url

FORMAT_VERSION = 1
META_KEY = b"recaption"

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
# The columns after these (filter metrics, re-ranking, ...) belong to the column groups of the
# annotator registry (`recaption.annotators`), which gives the full schema to `write`.


def path_for(ann_dir: str, shard: str) -> str:
    """`ANN/NAME.parquet` for input shard NAME."""
    return join(ann_dir, f"{shard}.parquet")


def to_table(rows: list[dict], groups: dict | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """Rows -> a table with `schema` (default: the fixed columns; every column it names, null where
    a row has no value), then any other keys of the rows; plus the metadata."""
    schema = schema or SCHEMA
    cols = {c: [r.get(c) for r in rows] for c in schema.names}
    t = pa.Table.from_pydict(cols, schema=schema)
    for k in [k for k in (rows[0] if rows else {}) if k not in schema.names]:
        t = t.append_column(k, pa.array([r.get(k) for r in rows]))
    meta = {"format_version": FORMAT_VERSION, "groups": groups or {}}
    return t.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})


def write(url: str, rows: list[dict], groups: dict | None = None, schema: pa.Schema | None = None) -> None:
    """Write the whole file atomically: a parquet that exists is a finished shard.

    `groups` maps each column group that holds results to the settings that computed it; `schema`
    is the file's (`recaption.annotators.schema()`: the fixed columns, then every group's)."""
    buf = io.BytesIO()
    pq.write_table(to_table(rows, groups, schema), buf, compression="zstd")
    with atomic_open(url) as f:
        f.write(buf.getvalue())


def read(url: str, columns: list[str] | None = None, threads: bool = True,
         choose=None) -> pa.Table:
    """The table (or some columns of it); a file without recaption's columns is a clear error.
    `threads=False` decodes the columns in this thread (for callers that read files in
    parallel); `choose(metadata)`, given the file's recorded `metadata` (footer only), may drop
    columns from `columns` before any is read."""
    with open_parquet(url) as pf:
        if choose is not None:
            columns = choose(metadata(pf.schema_arrow), list(columns or COLUMNS))
        t = pf.read(columns=columns, use_threads=threads)
    missing = [c for c in (columns or COLUMNS) if c not in t.column_names]
    if missing:
        from recaption.errors import RecaptionError

        raise RecaptionError(f"{url} is not a recaption annotation file (missing columns {missing})")
    return t


@contextlib.contextmanager
def open_parquet(url: str):
    """A parquet file to read from. A local one goes to pyarrow's own reader, which reads the
    needed column chunks natively, several times faster than through a Python file object."""
    path = local_path(url)
    if path is not None:
        yield pq.ParquetFile(path)
        return
    with open_url(url, "rb") as f:
        yield pq.ParquetFile(f)


def read_table(url: str, columns: list[str] | None = None, threads: bool = True) -> pa.Table:
    """A parquet file (annotations, decisions, drops); columns it lacks are left out."""
    with open_parquet(url) as pf:
        return pf.read(columns=columns, use_threads=threads)


def read_rows(url: str) -> list[dict]:
    """Every row as a dict (for one shard's worth of rows; pools are read columnar)."""
    return read(url).to_pylist()


def metadata(t: pa.Table | pa.Schema) -> dict | None:
    """The recorded {format_version, groups}; None for a file written before they were recorded."""
    schema = t.schema if isinstance(t, pa.Table) else t
    raw = (schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else None


def row_count(url: str) -> int:
    """Rows of an annotation file (one a sample of its shard), from the footer alone."""
    with open_parquet(url) as pf:
        return pf.metadata.num_rows


def read_metadata(url: str) -> dict | None:
    """`metadata` from the file footer alone (no data pages read)."""
    with open_url(url, "rb") as f:
        return metadata(pq.read_schema(f))
