"""Every strategy side by side on one pool, from the annotation files alone (no shards read): the
dry run's view, the report's bars and eval's comparison all come from here."""
from __future__ import annotations

import dataclasses

from recaption.mixing.pool import Pool, PoolSource, Scores, fraction_rank, median_ranks
from recaption.mixing.strategies import CATEGORIES, SHARD_ERROR, STRATEGIES, MixConfig, PoolNumbers

# The strategies in the order shown; `threshold` twice, as mixed with and without filtering the
# synthetic captions (Nguyen et al.'s best mix filters them).
VARIANTS = [(s, False) for s in STRATEGIES if s != "threshold"]
VARIANTS.insert(STRATEGIES.index("threshold"), ("threshold", True))
VARIANTS.insert(STRATEGIES.index("threshold"), ("threshold", False))


def variant_name(strategy: str, filter_synthetic: bool) -> str:
    """A strategy's name in the side-by-side view (`threshold --filter-synthetic` for that variant)."""
    return "threshold --filter-synthetic" if filter_synthetic else strategy


def side_by_side(source: PoolSource, base: MixConfig, pool: Pool | None = None, fixed: dict | None = None,
                 medians: bool = False) -> list[dict]:
    """One dict per strategy at `base`'s threshold or fraction, alpha and filters (those of `source`).

    Each: `strategy` (a name, `threshold --filter-synthetic` for that variant), `threshold` and
    `threshold_column`, `kept`, `raw`, `synthetic`, `dropped` (sample rows not written: errors and
    filters too) and `cut` (the strategy's own drops by reason); with `medians`, the mean and
    median CLIP score of what it would write. `fixed` ({strategy name: threshold}) replaces a
    computed threshold, e.g. the one a mix folder used. A strategy that needs a threshold no score
    gives has `note` saying why and no counts. The pool's stats are taken once (or `pool`'s
    reused), the fraction thresholds in one select pass, every strategy counted in one pass.
    """
    pool = pool or source.stats()
    base_n = pool.numbers
    cfgs = {variant_name(s, fs): dataclasses.replace(base, strategy=s, filter_synthetic=fs) for s, fs in VARIANTS}
    t_of: dict[str, float | None] = {}
    if base.fraction is not None:
        cols = sorted({c.threshold_column for c in cfgs.values()})
        wanted = [(Scores(col, base_n, base.alpha), fraction_rank(base.fraction)) for col in cols]
        t_of = dict(zip(cols, source.select(wanted)))
    rows, jobs = [], []
    for name, cfg in cfgs.items():
        t = base.threshold if base.fraction is None else t_of[cfg.threshold_column]
        t = (fixed or {}).get(name, t)
        row = {"strategy": name, "threshold": t, "threshold_column": cfg.threshold_column}
        if t is None and (base.fraction is not None or cfg.strategy in ("threshold", "sieve")):
            row["note"] = (f"no {cfg.threshold_column} scores to take a fraction of" if base.fraction is not None
                           else "needs --threshold or --fraction")
        else:
            jobs.append((name, cfg, PoolNumbers(base_n.sieve, base_n.clip_raw, t)))
        rows.append(row)
    outcomes = dict(zip([n for n, _, _ in jobs], source.counts_many([(c, n) for _, c, n in jobs], written=medians)))
    med_jobs = []
    for row in rows:
        o = outcomes.get(row["strategy"])
        if o is None:
            continue
        kept = o.raw + o.synthetic
        row.update(kept=kept, raw=o.raw, synthetic=o.synthetic,
                   dropped=int(o.codes.sum()) - kept - int(o.codes[SHARD_ERROR]),
                   cut={CATEGORIES[c]: int(o.codes[c]) for c in CATEGORIES if o.codes[c]})
        if medians:
            row["mean_clip_written"] = o.written_sum / o.written_n if o.written_n else None
            name, cfg, numbers = next(j for j in jobs if j[0] == row["strategy"])
            med_jobs += [(row, Scores("written", numbers, cfg.alpha, cfg), r) for r in median_ranks()]
    if med_jobs:
        values = source.select([(s, r) for _, s, r in med_jobs])
        for i in range(0, len(med_jobs), 2):
            lo, hi = values[i], values[i + 1]
            med_jobs[i][0]["median_clip_written"] = None if lo is None else (lo + hi) / 2
    return rows


def strategy_table(source: PoolSource, fraction: float = 0.3, alpha: float = 0.5,
                   thresholds: dict | None = None, filter_synthetic_only: bool = True) -> list[dict]:
    """eval's comparison: every strategy at `fraction` (as `mix --fraction` would do it), with the
    mean and median CLIP score of what it writes; `threshold` with --filter-synthetic only unless
    `filter_synthetic_only` is false. `thresholds` ({strategy: t}) replaces computed ones."""
    rows = side_by_side(source, MixConfig(fraction=fraction, alpha=alpha, filters=source.filters.spec),
                        fixed=thresholds, medians=True)
    if filter_synthetic_only:
        rows = [r for r in rows if r["strategy"] != "threshold"]
        for r in rows:
            if r["strategy"] == "threshold --filter-synthetic":
                r["strategy"] = "threshold"
    return rows
