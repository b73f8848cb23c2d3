"""What every strategy would do to a pool, from the annotation rows alone (no shards read)."""
from __future__ import annotations

import statistics

from recaption.mixing.strategies import STRATEGIES, MixConfig, PoolNumbers, decide, row_blend
from recaption.scoring.blend import MinMax, fraction_threshold


def strategy_table(rows: list[dict], fraction: float = 0.3, alpha: float = 0.5,
                   thresholds: dict | None = None) -> list[dict]:
    """One dict per strategy: threshold, kept, raw, replaced, dropped, CLIP of what it would write.

    raw, threshold and sieve use `fraction` of the pool (threshold with --filter-synthetic);
    `thresholds` ({"clip_raw": t, "blend": t}) overrides the computed ones, e.g. a run's own.
    A strategy that needs a threshold no score can give is left out.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    base = PoolNumbers(MinMax.of(r["sieve"] for r in ok), MinMax.of(r["clip_raw"] for r in ok), None)
    t_of = {"clip_raw": fraction_threshold([r["clip_raw"] for r in ok], fraction),
            "blend": fraction_threshold([row_blend(r, base, alpha) for r in ok], fraction)} | (thresholds or {})
    table = []
    for s in STRATEGIES:
        cfg = MixConfig(strategy=s, fraction=fraction if s in ("raw", "threshold", "sieve") else None,
                        alpha=alpha, filter_synthetic=(s == "threshold"))
        t = t_of["blend" if s == "sieve" else "clip_raw"] if cfg.fraction is not None else None
        if t is None and s in ("threshold", "sieve"):
            continue
        pool = PoolNumbers(base.sieve, base.clip_raw, t)
        counts, written = {"raw": 0, "synthetic": 0, "dropped": 0}, []
        for r in rows:
            d = decide(r, cfg, pool)
            if not d.keep:
                counts["dropped"] += 1
                continue
            counts[d.source] += 1
            score = r["clip_raw"] if d.source == "raw" else d.clip_synthetic
            if score is not None:
                written.append(score)
        table.append({"strategy": s, "threshold": t, "kept": counts["raw"] + counts["synthetic"],
                      "raw": counts["raw"], "replaced": counts["synthetic"], "dropped": counts["dropped"],
                      "mean_clip_written": statistics.fmean(written) if written else None,
                      "median_clip_written": statistics.median(written) if written else None})
    return table
