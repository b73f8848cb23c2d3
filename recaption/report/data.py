"""Gather what a report shows from an annotation folder or a mixed output folder."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from recaption.errors import RecaptionError
from recaption.mixing.compare import strategy_table
from recaption.mixing.strategies import PoolNumbers, row_blend, synthetic_of
from recaption.scoring.blend import MinMax, fraction_threshold


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
    raw_rows = [r for f in ann_files for r in pq.read_table(f).to_pylist() if r["key"] is not None]
    ok = [r for r in raw_rows if r["status"] == "ok"]
    mm = PoolNumbers(MinMax.of(r["sieve"] for r in ok), MinMax.of(r["clip_raw"] for r in ok), None)
    if summary and summary.get("alpha") is not None:
        alpha = summary["alpha"]
    rows = []
    for r in ok:
        syn, cs = synthetic_of(r)
        rows.append({"key": r["key"], "shard": r["shard"], "raw": r["raw_caption"], "synthetic": syn,
                     "clip_raw": r["clip_raw"], "clip_syn": cs, "sieve": r["sieve"],
                     "blend": row_blend(r, mm, alpha)})
    data = ReportData(str(p), rows, summary)
    data.thresholds = {
        "clip_raw": fraction_threshold([r["clip_raw"] for r in rows], fraction),
        "clip_syn": fraction_threshold([r["clip_syn"] for r in rows], fraction),
        "blend": fraction_threshold([r["blend"] for r in rows], fraction),
    }
    if summary and summary.get("threshold") is not None:
        col = {"clip_raw": "clip_raw", "clip_synthetic": "clip_syn", "blend": "blend"}[summary["threshold_column"]]
        data.thresholds[col] = summary["threshold"]
    own = {k: data.thresholds[k] for k in ("clip_raw", "blend")}
    for t in strategy_table(raw_rows, fraction, alpha, own):
        data.per_strategy[t["strategy"]] = {"raw": t["raw"], "synthetic": t["replaced"], "dropped": t["dropped"]}
    _pick_images(data, p, input_spec)
    return data


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
