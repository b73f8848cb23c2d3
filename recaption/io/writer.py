"""Write img2dataset-style shards: NNNNN.tar + NNNNN.parquet + NNNNN_stats.json, atomically.

The tar streams to a temporary name and is renamed when complete; the stats file is written last,
so its presence marks a finished shard for resume. Members are either new (field -> bytes, given
fixed headers) or raw tar blocks copied from an input shard unchanged (`recaption.io.tarcopy`),
written by the caller's `fill` into the tar.
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from recaption.io.atomic import atomic_open, join
from recaption.io.tarcopy import MTIME, BlockWriter



def shard_paths(out_dir: str, name: str) -> dict[str, str]:
    """The tar, parquet and stats paths of output shard `name`."""
    return {
        "tar": join(out_dir, f"{name}.tar"),
        "parquet": join(out_dir, f"{name}.parquet"),
        "stats": join(out_dir, f"{name}_stats.json"),
    }


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add one member with recaption's fixed header fields (mtime 0, mode 444)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MTIME
    info.mode = 0o444
    info.uname = info.gname = "bigdata"
    tar.addfile(info, io.BytesIO(data))


def write_with(out_dir: str, name: str, fill: Callable[[BlockWriter], pa.Table],
               extra_stats: dict | None = None) -> dict:
    """An output shard whose members `fill` writes into the tar, returning the parquet table (one
    row a sample, in order). Returns the stats written."""
    p = shard_paths(out_dir, name)
    start = time.time()
    with atomic_open(p["tar"]) as f, BlockWriter(f) as tar:
        table = fill(tar)
        tar.close()
    buf = io.BytesIO()
    pq.write_table(table, buf)
    with atomic_open(p["parquet"]) as f:
        f.write(buf.getvalue())
    end = time.time()
    n = table.num_rows
    stats = {
        "count": n,
        "successes": n,
        "failed_to_download": 0,
        "failed_to_resize": 0,
        "duration": round(end - start, 3),
        "start_time": start,
        "end_time": end,
        "status_dict": {"success": n},
    } | (extra_stats or {})
    with atomic_open(p["stats"], "wb") as f:
        f.write(json.dumps(stats, indent=2).encode())
    return stats
