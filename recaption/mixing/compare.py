"""What every strategy would do to a pool, from the annotation files alone (no shards read)."""
from __future__ import annotations

from recaption.mixing.pool import PoolSource, Scores, fraction_rank, median_ranks
from recaption.mixing.strategies import SHARD_ERROR, STRATEGIES, MixConfig, PoolNumbers


def strategy_table(source: PoolSource, fraction: float = 0.3, alpha: float = 0.5,
                   thresholds: dict | None = None) -> list[dict]:
    """One dict per strategy: threshold, kept, raw, replaced, dropped, CLIP of what it would write.

    raw, threshold and sieve use `fraction` of the pool (threshold with --filter-synthetic);
    `thresholds` ({"clip_raw": t, "blend": t}) overrides the computed ones, e.g. a run's own.
    A strategy that needs a threshold no score can give is left out. Every number is exact (the
    medians too) and comes from the same pool pass a mix uses.
    """
    pool = source.stats()
    base = pool.numbers
    t_of = dict(zip(("clip_raw", "blend"), source.select([
        (Scores("clip_raw"), fraction_rank(fraction)),
        (Scores("blend", base, alpha), fraction_rank(fraction)),
    ]))) | (thresholds or {})
    rows, medians = [], []
    for s in STRATEGIES:
        cfg = MixConfig(strategy=s, fraction=fraction if s in ("raw", "threshold", "sieve") else None,
                        alpha=alpha, filter_synthetic=(s == "threshold"))
        t = t_of["blend" if s == "sieve" else "clip_raw"] if cfg.fraction is not None else None
        if t is None and s in ("threshold", "sieve"):
            continue
        numbers = PoolNumbers(base.sieve, base.clip_raw, t)
        o = source.counts(cfg, numbers, written=True)
        kept = o.raw + o.synthetic
        rows.append({"strategy": s, "threshold": t, "kept": kept, "raw": o.raw, "replaced": o.synthetic,
                     "dropped": int(o.codes.sum()) - kept - int(o.codes[SHARD_ERROR]),
                     "mean_clip_written": o.written_sum / o.written_n if o.written_n else None,
                     "median_clip_written": None})
        written = Scores("written", numbers, alpha, cfg)
        medians += [(written, r) for r in median_ranks()]
    values = source.select(medians)
    for i, r in enumerate(rows):
        lo, hi = values[2 * i], values[2 * i + 1]
        r["median_clip_written"] = None if lo is None else (lo + hi) / 2
    return rows
