"""Small readers used by end-to-end tests."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from recaption.io.shards import iter_shard


def read_output(out: Path) -> dict[str, object]:
    """key -> Sample for every sample in an output folder's shards."""
    got = {}
    for t in sorted(out.glob("*.tar")):
        for s in iter_shard(str(t)):
            assert s.key not in got, f"{s.key} written twice"
            got[s.key] = s
    return got


def dropped(out: Path) -> dict:
    t = pq.read_table(out / "_dropped.parquet").to_pylist()
    return {(r["key"], r["shard"]): r["reason"] for r in t}


def input_samples(shard_dir: Path) -> dict:
    return {s.key: s for t in sorted(shard_dir.glob("*.tar")) for s in iter_shard(str(t)) if hasattr(s, "members")}


def summary(out: Path) -> dict:
    return json.loads((out / "_summary.json").read_text())


def tree_bytes(out: Path) -> dict[str, bytes]:
    """Content of every shard and parquet file; stats files carry timings, so only their counts."""
    res = {}
    for p in sorted(out.iterdir()):
        if p.suffix == ".tar":
            res[p.name] = p.read_bytes()
        elif p.name.endswith("_stats.json"):
            res[p.name] = json.loads(p.read_text())["count"]
        elif p.suffix == ".parquet":
            res[p.name] = pq.read_table(p).to_pylist()
    return res
