"""The mixing rules (docs/formats.md) written out row by row in plain Python, as the reference the columnar code is
checked against; and random annotation rows full of the awkward cases."""
from __future__ import annotations

import math
import random

from recaption.mixing.strategies import MixConfig

NAN = float("nan")


def scored(x) -> bool:
    return x is not None and math.isfinite(x)


def synthetic(row) -> tuple[str | None, float | None]:
    """Highest scored CLIP, first on ties; else the first candidate, unscored."""
    caps = row["captions"] or []
    if not caps:
        return None, None
    sc = row["clip_captions"] or []
    if len(sc) != len(caps) or not any(scored(s) for s in sc):
        return caps[0], None
    i = max((i for i in range(len(sc)) if scored(sc[i])), key=lambda i: (sc[i], -i))
    return caps[i], float(sc[i])


def minmax(values):
    v = [float(x) for x in values if scored(x)]
    return (min(v), max(v)) if v else (None, None)


def norm(x, mm):
    lo, hi = mm
    if not scored(x) or lo is None:
        return None
    return 0.0 if hi == lo else (float(x) - lo) / (hi - lo)


def pool_numbers(rows, alpha=0.5):
    """min/max over the pool rows (a key, status ok); clip_raw only where there is alt-text."""
    ok = [r for r in rows if r["key"] is not None and r["status"] == "ok"]
    mm_s = minmax(r["sieve"] for r in ok)
    mm_c = minmax(r["clip_raw"] for r in ok if r["raw_caption"] is not None)
    return mm_s, mm_c


def blend(row, mm_s, mm_c, alpha):
    clip = row["clip_raw"] if row["raw_caption"] is not None else None
    s, c = norm(row["sieve"], mm_s), norm(clip, mm_c)
    return None if s is None or c is None else (1.0 - alpha) * s + alpha * c


def threshold_of(rows, column, fraction, mm_s, mm_c, alpha):
    ok = [r for r in rows if r["key"] is not None and r["status"] == "ok"]
    if column == "clip_raw":
        v = [r["clip_raw"] for r in ok if r["raw_caption"] is not None]
    elif column == "clip_synthetic":
        v = [synthetic(r)[1] for r in ok]
    else:
        v = [blend(r, mm_s, mm_c, alpha) for r in ok]
    v = sorted((float(x) for x in v if scored(x)), reverse=True)
    return v[min(int(len(v) * fraction), len(v) - 1)] if v else None


def decide(row, cfg: MixConfig, t, mm_s, mm_c) -> tuple[str, str | None]:
    """('raw' | 'synthetic' | 'drop', category of the reason)."""
    if row["key"] is None:
        return "drop", "shard error"
    if row["status"] != "ok":
        return "drop", "error"
    raw = row["raw_caption"]
    clip = row["clip_raw"] if raw is not None else None
    syn, cs = synthetic(row)
    s = cfg.strategy
    if s in ("raw", "both", "sieve"):
        if raw is None:
            return "drop", "mix: no raw caption"
        if s == "sieve":
            b = blend(row, mm_s, mm_c, cfg.alpha)
            if b is None:
                return "drop", "mix: no blend score"
            if b < t:
                return "drop", "mix: blend below threshold"
        elif t is not None:
            if not scored(clip):
                return "drop", "mix: no clip_raw score"
            if clip < t:
                return "drop", "mix: clip_raw below threshold"
        return "raw", None
    if s == "synthetic":
        if syn is None:
            return "drop", "mix: no synthetic caption"
        if t is not None:
            if not scored(cs):
                return "drop", "mix: no CLIP score for the synthetic caption"
            if cs < t:
                return "drop", "mix: synthetic clip below threshold"
        return "synthetic", None
    if scored(clip) and clip >= t:
        return "raw", None
    if syn is None:
        return "drop", "mix: raw caption below threshold and no synthetic caption"
    if cfg.filter_synthetic:
        if not scored(cs):
            return "drop", "mix: no CLIP score for the synthetic caption"
        if cs < t:
            return "drop", "mix: raw and synthetic both below threshold"
    return "synthetic", None


def _score(rng: random.Random):
    """A score: mostly a value on a coarse grid (ties), sometimes missing as null, NaN or inf."""
    p = rng.random()
    if p < 0.06:
        return None
    if p < 0.1:
        return NAN
    if p < 0.11:
        return float("inf")
    return round(rng.uniform(0.1, 0.4), 2)


def random_rows(n: int, seed: int = 0, shard: str = "00000", shard_error: bool = False) -> list[dict]:
    """Annotation rows with every awkward case: no alt-text, missing and NaN
    scores, partly scored or unpaired candidates, error rows, a shard error row at the end."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        key = f"{shard}{i:05d}"
        raw = None if rng.random() < 0.1 else f"alt {i}"
        k = rng.choice([0, 1, 2, 3])
        caps = [f"cap {i}.{j}" for j in range(k)]
        p = rng.random()
        if p < 0.15:
            clips = []  # candidates not scored
        elif p < 0.2:
            clips = [_score(rng) for _ in range(k + 1)]  # does not pair with the candidates
        else:
            clips = [_score(rng) for _ in range(k)]
        row = {"key": key, "shard": shard, "raw_caption": raw, "captions": caps, "captioner": "m",
               "clip_raw": _score(rng) if raw is not None or rng.random() < 0.1 else None,
               "clip_captions": clips, "sieve": _score(rng) if raw is not None else None,
               "sieve_mean": None, "sieve_best": None, "status": "ok", "error": None}
        if rng.random() < 0.04:
            row.update(status="error", error=rng.choice(["decode: image is empty", "caption: oom 12", None]))
        rows.append(row)
    if shard_error:
        rows.append({**rows[0], "key": None, "status": "error", "error": "read: truncated or corrupt tar (x)"})
    return rows


CONFIGS = [
    MixConfig("raw"), MixConfig("raw", threshold=0.25), MixConfig("raw", fraction=0.4),
    MixConfig("synthetic"), MixConfig("synthetic", threshold=0.3), MixConfig("synthetic", fraction=0.5),
    MixConfig("threshold", fraction=0.3), MixConfig("threshold", fraction=0.3, filter_synthetic=True),
    MixConfig("threshold", threshold=0.2, filter_synthetic=True), MixConfig("both", fraction=0.5),
    MixConfig("both"), MixConfig("sieve", fraction=0.2), MixConfig("sieve", fraction=0.6, alpha=0.2),
    MixConfig("sieve", threshold=0.5), MixConfig("raw", fraction=0.0), MixConfig("raw", fraction=1.0),
    MixConfig("threshold", fraction=1.0, filter_synthetic=True), MixConfig("synthetic", fraction=0.0),
]


def expected(rows, cfg: MixConfig):
    """Per row (outcome, reason category), and the threshold, as the rules define them."""
    mm_s, mm_c = pool_numbers(rows, cfg.alpha)
    t = cfg.threshold
    if cfg.fraction is not None:
        t = threshold_of(rows, cfg.threshold_column, cfg.fraction, mm_s, mm_c, cfg.alpha)
    return [decide(r, cfg, t, mm_s, mm_c) for r in rows], t, (mm_s, mm_c)
