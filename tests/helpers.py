"""What several test modules share: the CLI runner, random annotation builders, readers of
output folders and samples. Test modules import these from here, never from each other."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recaption.cli import main
from recaption.io import annotations as ann
from recaption.io.shards import iter_shard
from tests.mixing import oracle


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


def cli(*args):
    """Run the `recaption` command line in this process; its exit status."""
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


def annotate_randomly(shard_dir, ann_dir, seed=0):
    """Annotation files for real shards: their keys, random scores with ties, NaN and nulls."""
    ann_dir.mkdir(exist_ok=True)
    for t in sorted(shard_dir.glob("*.tar")):
        recs = list(iter_shard(str(t)))
        rows = oracle.random_rows(len(recs), seed=seed + int(t.stem), shard=t.stem)
        for r, rec in zip(rows, recs):
            r["key"], r["raw_caption"] = rec.key, getattr(rec, "raw_caption", None)
            if not hasattr(rec, "members"):
                r.update(status="error", error=rec.reason)
        ann.write(str(ann_dir / f"{t.stem}.parquet"), rows)
    return ann_dir


CAPTIONERS = {"00000": "Salesforce/blip-image-captioning-base", "00001": "/models/coca;ViT L", "00002": "imported"}


def annotate_by_captioners(shard_dir, ann_dir, captioners=CAPTIONERS, seed=0):
    """Random annotations whose shards were captioned by different captioners."""
    annotate_randomly(shard_dir, ann_dir, seed=seed)
    for name, who in captioners.items():
        path = ann_dir / f"{name}.parquet"
        t = pq.read_table(path)
        i = t.column_names.index("captioner")
        t = t.set_column(i, "captioner", pa.array([who] * len(t), pa.string()))
        pq.write_table(t, path)  # the schema metadata (the groups) stays
    return ann_dir


def urls(folder) -> list[str]:
    """The shards of a folder, sorted."""
    return sorted(str(p) for p in folder.glob("*.tar"))


def plain(s: dict) -> dict:
    """A sample without where it was read from, and without the members it lacks (None, or NaN
    where Ray's reader keeps a column of some samples' members as Python objects)."""
    return {k: v for k, v in s.items() if k not in ("__url__", "__local_path__") and v is not None and v == v}
