"""Every strategy side by side on one pool, from the annotation files alone (no shards read): the
dry run's view, the report's bars and eval's comparison all come from here."""
from __future__ import annotations

import dataclasses

from recaption.mixing.pool import Pool, PoolSource, Scores, fraction_rank, median_ranks
from recaption.mixing.strategies import FLAGS, SHARD_ERROR, MixConfig, PoolNumbers
from recaption.mixing.strategies.base import all_strategies


def variants() -> list[tuple[str, dict]]:
    """The rows of the side-by-side view, in order: each registered strategy with the settings of
    each of its variants (`threshold` twice, without and with `--filter-synthetic`)."""
    return [(s.name, v) for s in all_strategies() for v in s.variants]


def variant_name(strategy: str, filter_synthetic: bool = False) -> str:
    """A strategy's name in the side-by-side view (`threshold --filter-synthetic` for that variant)."""
    return _name(strategy, {"filter_synthetic": filter_synthetic})


def _name(strategy: str, settings: dict) -> str:
    return " ".join([strategy, *(f"--{k.replace('_', '-')}" for k, on in settings.items() if on)])


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
    off = dict.fromkeys(FLAGS, False)
    cfgs = {_name(s, v): dataclasses.replace(base, strategy=s, **(off | v)) for s, v in variants()}
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
        if t is None and (base.fraction is not None or cfg.kind.needs_threshold):
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
                   cut=o.by_category())
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
    mean and median CLIP score of what it writes; a strategy that takes --filter-synthetic
    (`threshold`) only with it, under its own name, unless `filter_synthetic_only` is false.
    `thresholds` ({strategy: t}) replaces computed ones."""
    rows = side_by_side(source, MixConfig(fraction=fraction, alpha=alpha, filters=source.filters.spec),
                        fixed=thresholds, medians=True)
    if not filter_synthetic_only:
        return rows
    shown = variants()
    takes = {s for s, v in shown if v.get("filter_synthetic")}
    out = []
    for r, (s, v) in zip(rows, shown):
        if s in takes:
            if not v.get("filter_synthetic"):
                continue
            r["strategy"] = s
        out.append(r)
    return out
