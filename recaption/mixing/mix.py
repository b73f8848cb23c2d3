"""Mixing passes over a shard set and its annotations.

1. pool pass: the annotation files alone give min/max and the threshold (cheap; re-run freely);
2. plan: per input shard, which samples are kept, and which output shard each one lands in
   (deterministic, so output shards are independent units of work that resume cleanly);
   dropped samples stream into `_dropped.parquet`;
3. write stage: per output shard, stream the input shards it draws from and copy members byte
   for byte, replacing `txt` and `json` only.
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io.atomic import atomic_open, exists, join
from recaption.io.shards import DEFAULT_IMAGE_KEYS, ReadOptions, iter_shard
from recaption.io.sources import shard_name
from recaption.io.writer import is_done, write_shard
from recaption.mixing.strategies import Decision, MixConfig, PoolNumbers, decide, row_blend, synthetic_of
from recaption.scoring.blend import MinMax, fraction_threshold

POOL_COLUMNS = ["key", "status", "raw_caption", "captions", "clip_raw", "clip_captions", "sieve", "captioner"]
DROPPED_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("reason", pa.string())])


def ann_file(ann_dir: str, url: str) -> str:
    return ann.path_for(ann_dir, shard_name(url))


def _missing(ann_dir: str, shards: list[str]) -> list[str]:
    return [shard_name(u) for u in shards if not exists(ann_file(ann_dir, u))]


# -- 1. pool pass ----------------------------------------------------------------------------
@dataclass
class Pool:
    numbers: PoolNumbers
    n_rows: int
    captioners: list[str]
    ranges: dict = field(default_factory=dict)


def pool_pass(shards: list[str], ann_dir: str, cfg: MixConfig) -> Pool:
    clip_raw, sieve, clip_syn = [], [], []
    captioners: set[str] = set()
    n = 0
    present = [u for u in shards if exists(ann_file(ann_dir, u))]
    for u in present:
        t = ann.read(ann_file(ann_dir, u), columns=POOL_COLUMNS)
        for r in t.to_pylist():
            if r["key"] is None:
                continue
            n += 1
            if r["status"] != "ok":
                continue
            if r["captioner"]:
                captioners.add(r["captioner"])
            clip_raw.append(r["clip_raw"] if r["raw_caption"] is not None else None)
            sieve.append(r["sieve"])
            clip_syn.append(synthetic_of(r)[1])
    mm_s, mm_c = MinMax.of(sieve), MinMax.of(clip_raw)
    numbers = PoolNumbers(mm_s, mm_c, cfg.threshold)
    if cfg.fraction is not None:
        col = cfg.threshold_column
        if col == "blend":
            fake = PoolNumbers(mm_s, mm_c, None)
            vals = [row_blend({"sieve": s, "clip_raw": c}, fake, cfg.alpha) for s, c in zip(sieve, clip_raw)]
        else:
            vals = clip_syn if col == "clip_synthetic" else clip_raw
        numbers.threshold = fraction_threshold(vals, cfg.fraction)
        if numbers.threshold is None:
            raise RecaptionError(f"--fraction needs {col} scores, and no annotated sample has one; run "
                                 "`recaption score` with the scorer this strategy uses")
    if cfg.strategy in ("threshold", "sieve") and numbers.threshold is None:
        raise RecaptionError(f"strategy {cfg.strategy!r} has no threshold")
    ranges = {"clip_raw": [mm_c.lo, mm_c.hi], "sieve": [mm_s.lo, mm_s.hi]}
    return Pool(numbers, n, sorted(captioners), ranges)


# -- 2. plan ---------------------------------------------------------------------------------
@dataclass
class Part:
    url: str
    ann: str
    start: int  # slice of this shard's kept samples
    end: int


@dataclass
class OutputPlan:
    name: str
    parts: list[Part]
    cfg: dict
    numbers: dict
    out_dir: str
    image_keys: list[str]


def category(reason: str) -> str:
    """Group drop reasons for the summary: numbers out, the error stage kept."""
    text = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "", reason.split(" (", 1)[0])
    return re.sub(r"\s+", " ", text).strip()[:120]


def plan(shards: list[str], ann_dir: str, out_dir: str | None, cfg: MixConfig, pool: Pool,
         image_keys=DEFAULT_IMAGE_KEYS) -> tuple[list[OutputPlan], dict]:
    """Decide every row; stream drops to `_dropped.parquet` (unless out_dir is None: dry run)."""
    counts = {"read": 0, "kept": 0, "raw": 0, "synthetic": 0, "errors": 0, "dropped": {}, "shard_errors": []}
    kept_per_shard: list[tuple[str, str, int]] = []
    with contextlib.ExitStack() as stack:
        writer = None
        if out_dir is not None:  # drops stream to the file, one row group per shard: memory stays flat
            f = stack.enter_context(atomic_open(join(out_dir, "_dropped.parquet")))
            writer = pq.ParquetWriter(f, DROPPED_SCHEMA)
            stack.callback(writer.close)
        _decide_all(shards, ann_dir, cfg, pool, counts, kept_per_shard, writer)
    plans = _assign(kept_per_shard, cfg, pool, out_dir or "", list(image_keys))
    return plans, counts


def _decide_all(shards, ann_dir, cfg, pool, counts, kept_per_shard, writer):
    for u in shards:
        name, path = shard_name(u), ann_file(ann_dir, u)
        if not exists(path):
            counts["shard_errors"].append({"shard": name, "error": "no annotation file (shard not annotated)"})
            continue
        drops = {"key": [], "shard": [], "reason": []}
        kept = 0
        for r in ann.read(path).to_pylist():
            if r["key"] is None:  # a shard-level read error, after the samples it let through
                counts["shard_errors"].append({"shard": name, "error": r["error"]})
                _drop(drops, counts, None, name, r["error"] or "read: shard error")
                continue
            counts["read"] += 1
            if r["status"] != "ok":
                counts["errors"] += 1
            d = decide(r, cfg, pool.numbers)
            if d.keep:
                kept += 1
                counts[d.source] += 1
            else:
                _drop(drops, counts, r["key"], name, d.reason)
        counts["kept"] += kept
        kept_per_shard.append((u, path, kept))
        if writer is not None and drops["key"]:
            writer.write_table(pa.table(drops, schema=DROPPED_SCHEMA))


def _drop(drops, counts, key, shard, reason):
    drops["key"].append(key)
    drops["shard"].append(shard)
    drops["reason"].append(reason)
    c = category(reason)
    counts["dropped"][c] = counts["dropped"].get(c, 0) + 1


def _assign(kept_per_shard, cfg: MixConfig, pool: Pool, out_dir, image_keys) -> list[OutputPlan]:
    common = dict(cfg=asdict(cfg), numbers=_numbers_dict(pool.numbers), out_dir=out_dir, image_keys=image_keys)
    if cfg.keep_sharding:
        return [OutputPlan(shard_name(u), [Part(u, a, 0, k)], **common) for u, a, k in kept_per_shard]
    plans, cur, room, idx = [], [], cfg.samples_per_shard, 0
    for u, a, k in kept_per_shard:
        start = 0
        while start < k:
            take = min(room, k - start)
            cur.append(Part(u, a, start, start + take))
            start += take
            room -= take
            if room == 0:
                plans.append(OutputPlan(f"{idx:05d}", cur, **common))
                cur, room, idx = [], cfg.samples_per_shard, idx + 1
    if cur:
        plans.append(OutputPlan(f"{idx:05d}", cur, **common))
    return plans


def _numbers_dict(n: PoolNumbers) -> dict:
    return {"sieve": [n.sieve.lo, n.sieve.hi], "clip_raw": [n.clip_raw.lo, n.clip_raw.hi], "threshold": n.threshold}


def _numbers_from(d: dict) -> PoolNumbers:
    return PoolNumbers(MinMax(*d["sieve"]), MinMax(*d["clip_raw"]), d["threshold"])


# -- 3. write stage --------------------------------------------------------------------------
@dataclass
class WriteReport:
    shard: str
    status: str
    samples: int = 0
    error: str | None = None


class MixWriteStage:
    """Writes one output shard from its plan; picklable, so any engine can run it."""

    def __call__(self, p, progress=None) -> WriteReport:
        if isinstance(p, dict):
            p = OutputPlan(**{**p, "parts": [Part(**x) for x in p["parts"]]})
        if is_done(p.out_dir, p.name):
            n = sum(x.end - x.start for x in p.parts)
            if progress:
                progress(n)
            return WriteReport(p.name, "skipped", n)
        try:
            n = write_shard(p.out_dir, p.name, self._samples(p, progress))["count"]
        except Exception as e:
            return WriteReport(p.name, "failed", error=f"{type(e).__name__}: {e}")
        return WriteReport(p.name, "done", n)

    def _samples(self, p: OutputPlan, progress=None):
        cfg = MixConfig(**p.cfg)
        numbers = _numbers_from(p.numbers)
        for part in p.parts:
            rows = ann.read(part.ann).to_pylist()
            kept_idx = []  # record positions of this shard's kept samples, in order
            decisions = {}
            for i, r in enumerate(rows):
                if r["key"] is None:
                    continue
                d = decide(r, cfg, numbers)
                if d.keep:
                    kept_idx.append(i)
                    decisions[i] = d
            want = set(kept_idx[part.start : part.end])
            found = 0
            for pos, rec in enumerate(iter_shard(part.url, ReadOptions(image_keys=tuple(p.image_keys)))):
                if pos not in want:
                    continue
                if rec.key != rows[pos]["key"] or not hasattr(rec, "members"):
                    raise RecaptionError(f"{part.url} changed since it was annotated (sample {pos}: "
                                         f"{rec.key!r} vs {rows[pos]['key']!r}); re-annotate it")
                found += 1
                yield self._sample(rec, rows[pos], decisions[pos], cfg)
                if progress:
                    progress(1)
            if found != len(want):
                raise RecaptionError(f"{part.url}: {len(want) - found} kept samples could not be read back")

    @staticmethod
    def _sample(rec, row: dict, d: Decision, cfg: MixConfig):
        meta = dict(rec.meta or {})
        meta["recaption"] = {
            "raw_caption": row["raw_caption"], "synthetic_caption": d.synthetic, "caption_source": d.source,
            "clip_raw": row["clip_raw"], "clip_synthetic": d.clip_synthetic, "sieve": row["sieve"],
            "blend": d.blend, "captioner": row["captioner"], "strategy": cfg.strategy,
        }
        members = dict(rec.members)  # byte-for-byte, original order
        members["txt"] = d.caption.encode("utf-8")
        members["json"] = json.dumps(meta, ensure_ascii=False).encode("utf-8")
        if cfg.strategy == "both" and d.synthetic is not None:
            members["syn.txt"] = d.synthetic.encode("utf-8")
        prow = {
            "key": rec.key, "caption": d.caption, "caption_source": d.source, "url": meta.get("url"),
            "raw_caption": row["raw_caption"], "synthetic_caption": d.synthetic, "clip_raw": row["clip_raw"],
            "clip_synthetic": d.clip_synthetic, "sieve": row["sieve"], "blend": d.blend,
            "source_shard": rec.shard, "status": "success", "error_message": None,
            # img2dataset's columns, carried from the sample's json where it has them
            **{k: meta.get(k) for k in ("width", "height", "original_width", "original_height", "sha256")},
        }
        return rec.key, members, prow
