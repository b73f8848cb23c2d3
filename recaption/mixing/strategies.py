"""Mixing strategies of SPEC 4 as pure functions of one annotation row and the pool's numbers."""
from __future__ import annotations

from dataclasses import dataclass

from recaption.errors import RecaptionError
from recaption.scoring.blend import MinMax, blend

STRATEGIES = ("raw", "synthetic", "threshold", "both", "sieve")


@dataclass
class MixConfig:
    strategy: str = "threshold"
    threshold: float | None = None
    fraction: float | None = None
    filter_synthetic: bool = False
    alpha: float = 0.5
    samples_per_shard: int = 10000
    keep_sharding: bool = False

    def validate(self) -> "MixConfig":
        if self.strategy not in STRATEGIES:
            raise RecaptionError(f"unknown strategy {self.strategy!r}; choose {', '.join(STRATEGIES)}")
        if self.threshold is not None and self.fraction is not None:
            raise RecaptionError("give --threshold or --fraction, not both")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise RecaptionError(f"--fraction must be within [0, 1], got {self.fraction}")
        if self.strategy in ("threshold", "sieve") and self.threshold is None and self.fraction is None:
            raise RecaptionError(f"strategy {self.strategy!r} needs --threshold or --fraction")
        if self.filter_synthetic and self.strategy != "threshold":
            raise RecaptionError("--filter-synthetic only applies to --strategy threshold")
        if not 0.0 <= self.alpha <= 1.0:
            raise RecaptionError(f"--alpha must be within [0, 1], got {self.alpha}")
        if self.samples_per_shard < 1:
            raise RecaptionError("--samples-per-shard must be at least 1")
        return self

    @property
    def threshold_column(self) -> str:
        """Which score a --fraction is taken over."""
        return {"synthetic": "clip_synthetic", "sieve": "blend"}.get(self.strategy, "clip_raw")


@dataclass
class PoolNumbers:
    """What the pool pass found: min/max for the blend, and the threshold in force."""
    sieve: MinMax
    clip_raw: MinMax
    threshold: float | None


@dataclass
class Decision:
    keep: bool
    caption: str | None = None
    source: str | None = None  # raw | synthetic
    synthetic: str | None = None
    clip_synthetic: float | None = None
    blend: float | None = None
    reason: str | None = None


def synthetic_of(row: dict) -> tuple[str | None, float | None]:
    """The candidate with the highest CLIP score (first on ties); the first one without scores."""
    cands = row.get("captions") or []
    if not cands:
        return None, None
    scores = row.get("clip_captions") or []
    if len(scores) != len(cands) or any(s is None for s in scores):
        return cands[0], None
    best = max(range(len(cands)), key=lambda i: (scores[i], -i))
    return cands[best], float(scores[best])


def row_blend(row: dict, pool: PoolNumbers, alpha: float) -> float | None:
    return blend(row.get("sieve"), row.get("clip_raw"), pool.sieve, pool.clip_raw, alpha)


def decide(row: dict, cfg: MixConfig, pool: PoolNumbers) -> Decision:
    if row.get("status") != "ok":
        return Decision(False, reason=row.get("error") or "error")
    raw, clip_raw = row.get("raw_caption"), row.get("clip_raw")
    syn, clip_syn = synthetic_of(row)
    b = row_blend(row, pool, cfg.alpha)
    t = pool.threshold
    d = dict(synthetic=syn, clip_synthetic=clip_syn, blend=b)
    s = cfg.strategy

    if s in ("raw", "both", "sieve"):
        if raw is None:
            return Decision(False, reason="mix: no raw caption", **d)
        if s == "sieve":
            if b is None:
                return Decision(False, reason="mix: no blend score (sieve or clip_raw missing)", **d)
            if b < t:
                return Decision(False, reason=f"mix: blend {b:.4f} below threshold {t:.4f}", **d)
        elif t is not None:
            if clip_raw is None:
                return Decision(False, reason="mix: no clip_raw score", **d)
            if clip_raw < t:
                return Decision(False, reason=f"mix: clip_raw {clip_raw:.4f} below threshold {t:.4f}", **d)
        return Decision(True, raw, "raw", **d)

    if s == "synthetic":
        if syn is None:
            return Decision(False, reason="mix: no synthetic caption", **d)
        if t is not None:
            if clip_syn is None:
                return Decision(False, reason="mix: no CLIP score for the synthetic caption", **d)
            if clip_syn < t:
                return Decision(False, reason=f"mix: synthetic clip {clip_syn:.4f} below threshold {t:.4f}", **d)
        return Decision(True, syn, "synthetic", **d)

    # threshold: raw where it scores well enough, else the synthetic caption
    if raw is not None and clip_raw is not None and t is not None and clip_raw >= t:
        return Decision(True, raw, "raw", **d)
    if syn is None:
        return Decision(False, reason="mix: raw caption below threshold and no synthetic caption", **d)
    if cfg.filter_synthetic:
        if clip_syn is None:
            return Decision(False, reason="mix: no CLIP score for the synthetic caption", **d)
        if clip_syn < t:
            return Decision(False, reason=f"mix: raw and synthetic both below threshold {t:.4f}", **d)
    return Decision(True, syn, "synthetic", **d)
