"""Gather what a report shows from an annotation folder or a mixed output folder."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recaption.errors import RecaptionError
from recaption.mixing import columns
from recaption.mixing.compare import strategy_table
from recaption.mixing.pool import PoolSource, Scores, fraction_rank
from recaption.mixing.strategies import blend_of


@dataclass
class ReportData:
    source: str
    rows: list[dict]  # one per sample: key, shard, raw, synthetic, clip_raw, clip_syn, sieve, blend, source
    summary: dict | None = None
    thresholds: dict = field(default_factory=dict)
    per_strategy: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)  # key -> image bytes (only for the grid's picks)


def load(path: str | Path, input_spec: str | None = None, fraction: float = 0.3, alpha: float = 0.5) -> ReportData:
    p = Path(path)
    if not p.is_dir():
        raise RecaptionError(f"{p} is not a folder of annotations or mixed shards")
    summary = json.loads((p / "_summary.json").read_text()) if (p / "_summary.json").exists() else None
    ann_dir = p / "_annotations" if (p / "_annotations").is_dir() else p
    ann_files = sorted(f for f in ann_dir.glob("*.parquet") if not f.name.startswith("_"))
    if not ann_files or "status" not in pq.read_schema(ann_files[0]).names:
        raise RecaptionError(f"{p} holds no recaption annotation files (NAME.parquet with SPEC 2 columns)")
    if summary and summary.get("alpha") is not None:
        alpha = summary["alpha"]
    source = PoolSource.of_folder(str(ann_dir), [f.stem for f in ann_files])
    pool = source.stats()  # the same pool pass as a mix: min/max, thresholds, outcomes
    data = ReportData(str(p), _rows(source, pool.numbers, alpha), summary)
    data.thresholds = dict(zip(("clip_raw", "clip_syn", "blend"), source.select([
        (Scores("clip_raw"), fraction_rank(fraction)), (Scores("clip_synthetic"), fraction_rank(fraction)),
        (Scores("blend", pool.numbers, alpha), fraction_rank(fraction))])))
    if summary and summary.get("threshold") is not None:
        col = {"clip_raw": "clip_raw", "clip_synthetic": "clip_syn", "blend": "blend"}[summary["threshold_column"]]
        data.thresholds[col] = summary["threshold"]
    own = {k: data.thresholds[k] for k in ("clip_raw", "blend")}
    for t in strategy_table(source, fraction, alpha, own):
        data.per_strategy[t["strategy"]] = {"raw": t["raw"], "synthetic": t["replaced"], "dropped": t["dropped"]}
    _pick_images(data, p, input_spec)
    return data


def _rows(source: PoolSource, numbers, alpha: float) -> list[dict]:
    """One dict per scored-or-not ok sample, for the plots and the sample grid."""
    rows = []
    for f in source.files:
        t = columns.read(f.path, columns.columns_for(True, text=True) + ["shard"])
        c = columns.from_table(t)
        ok = c.pool
        part = pa.table({
            "key": t["key"], "shard": t["shard"], "raw": t["raw_caption"],
            "synthetic": columns.synthetic_text(t["captions"], c.syn_idx),
            "clip_raw": _nullable(c.clip_raw), "clip_syn": _nullable(c.clip_syn), "sieve": _nullable(c.sieve),
            "blend": _nullable(blend_of(c, numbers, alpha)),
        }).filter(pa.array(ok))
        rows += part.to_pylist()
    return rows


def _nullable(x: np.ndarray) -> pa.Array:
    x = np.asarray(x, dtype=np.float64)
    return pa.array(x, mask=~np.isfinite(x))


def picks(rows: list[dict], k: int = 6, seed: int = 0) -> dict[str, list[dict]]:
    scored = [r for r in rows if r["clip_raw"] is not None]
    by = sorted(scored, key=lambda r: r["clip_raw"])
    rng = random.Random(seed)
    return {"highest CLIP (raw)": by[::-1][:k], "lowest CLIP (raw)": by[:k],
            "random": rng.sample(rows, min(k, len(rows)))}


def _pick_images(data: ReportData, p: Path, input_spec):
    from recaption.io.shards import iter_shard
    from recaption.io.sources import list_shards, shard_name

    want = {r["key"] for group in picks(data.rows).values() for r in group}
    urls = sorted(str(t) for t in p.glob("*.tar"))
    input_spec = input_spec or (data.summary or {}).get("input")
    if input_spec:
        urls = list_shards(input_spec)
    elif not urls and data.summary is None:
        return
    shards = {r["shard"] for r in data.rows if r["key"] in want}
    for u in urls:
        if input_spec and shard_name(u) not in shards:
            continue
        for rec in iter_shard(u):
            if rec.key in want and hasattr(rec, "members") and rec.image_field:
                data.images[rec.key] = rec.image_bytes
