"""Mixing strategies (docs/formats.md#mixing-strategies), decided for a whole annotation file at once.

Every row gets one outcome code: kept with the raw or the synthetic caption, or dropped for one
named reason. A missing score (null, NaN, inf) fails every cut (docs/formats.md#missing-scores).
Each strategy is an object (`base.Strategy`, one module each here, registered in
`recaption.mixing`); `MixConfig` holds the settings and `decide_columns` applies the chosen
strategy and then what overrides every strategy (errors, filter rules). `decide(row, ...)` is the
same decision for one row given as a dict (tests, notebooks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recaption.mixing.config import MixConfig  # noqa: F401  (re-exported: its module imports no numpy)
from recaption.mixing.strategies.base import (CATEGORIES, DUPLICATE, ERROR, FILTERED, FLAGS, KEEP_RAW,  # noqa: F401
                                              KEEP_SYN, OVERLAP, REASONS, SHARD_ERROR, Rows, Strategy, named,
                                              reason_text, table)  # (re-exported)
from recaption.mixing import CAPTION_KEYS, STRATEGIES  # noqa: F401  (re-exported)
from recaption.scoring.blend import MinMax, blend_array, scored


@dataclass
class PoolNumbers:
    """What the pool pass found: min/max for the blend, and the threshold in force."""
    sieve: MinMax
    clip_raw: MinMax
    threshold: float | None


@dataclass
class Decisions:
    """The outcome code and blend score of every row of one file."""

    code: np.ndarray  # uint8 outcome per row
    blend: np.ndarray  # float64, NaN = missing

    @property
    def kept(self) -> np.ndarray:
        """Rows written, with either caption."""
        return self.code <= KEEP_SYN


def blend_of(cols, numbers: PoolNumbers, alpha: float) -> np.ndarray:
    """The blended score of every row, normalised by the pool's min/max (NaN where an input is missing)."""
    return blend_array(cols.sieve, cols.clip_raw, numbers.sieve, numbers.clip_raw, alpha)


def decide_columns(cols, cfg: MixConfig, numbers: PoolNumbers) -> Decisions:
    """The outcome of every row of one annotation file (`recaption.mixing.columns.Columns`): the
    strategy's decisions, then error and shard-error rows and rows a filter rule dropped."""
    b = blend_of(cols, numbers, cfg.alpha)
    kind = cfg.kind
    rows = Rows(cols, cfg, numbers.threshold, b, kind, table().dtype)
    kind.decide(rows)
    code = rows.code
    if cols.fcode is not None:
        code[cols.fcode >= 0] = FILTERED
    if cols.removed is not None:  # duplicates and evaluation overlaps (recaption.mixing.removal)
        gone = cols.removed > 0
        code[gone] = cols.removed[gone]
    code[~cols.ok] = ERROR
    code[~cols.keyed] = SHARD_ERROR
    return Decisions(code, b)


# -- one row, as a dict ----------------------------------------------------------------------
@dataclass
class Decision:
    """One row's outcome, as `decide` gives it for a single annotation row (tests, eval)."""

    keep: bool
    caption: str | None = None
    source: str | None = None  # raw | synthetic
    synthetic: str | None = None
    clip_synthetic: float | None = None
    blend: float | None = None
    reason: str | None = None


def _one_row(row: dict, filters=None):
    import pyarrow as pa

    from recaption.annotators import column_type
    from recaption.annotators.base import arrow_type
    from recaption.io.annotations import SCHEMA
    from recaption.mixing.columns import from_table

    # Python floats are float64: keep them so, not rounded to the files' float32
    schema = pa.schema([pa.field(f.name, _wide(f.type)) for f in SCHEMA])
    full = {c: row.get(c) for c in SCHEMA.names} | {"captions": row.get("captions") or [],
                                                   "clip_captions": row.get("clip_captions") or []}
    if row.get("rerank_pick") is not None:  # a re-ranking chain's pick is the synthetic caption
        schema = schema.append(pa.field("rerank_pick", pa.int32()))
        full["rerank_pick"] = row["rerank_pick"]
    if filters:  # the columns the rules read, as a file stores them
        for c in filters.columns:
            schema = schema.append(pa.field(c, arrow_type(column_type(c))))
            full[c] = row.get(c)
    t = pa.Table.from_pylist([full], schema=schema)
    return from_table(t, filters), t


def _wide(t):
    import pyarrow as pa

    if t == pa.float32():
        return pa.float64()
    return pa.list_(pa.float64()) if t == pa.list_(pa.float32()) else t


def synthetic_of(row: dict) -> tuple[str | None, float | None]:
    """The synthetic caption of one row and its CLIP score."""
    c, _ = _one_row(row)
    i = int(c.syn_idx[0])
    return (row["captions"][i], _f(c.clip_syn[0])) if i >= 0 else (None, None)


def decide(row: dict, cfg: MixConfig, pool: PoolNumbers) -> Decision:
    """`decide_columns` for one row given as a dict (with the filter metrics where cfg filters)."""
    filters = cfg.filter_set
    c, t = _one_row(row, filters)
    d = decide_columns(c, cfg, pool)
    code, b = int(d.code[0]), _f(d.blend[0])
    i = int(c.syn_idx[0])
    syn, cs = (row["captions"][i], _f(c.clip_syn[0])) if i >= 0 else (None, None)
    extra = dict(synthetic=syn, clip_synthetic=cs, blend=b)
    if code == KEEP_RAW:
        return Decision(True, row.get("raw_caption"), "raw", **extra)
    if code == KEEP_SYN:
        return Decision(True, syn, "synthetic", **extra)
    if code in (ERROR, SHARD_ERROR):
        return Decision(False, reason=row.get("error") or "error", **extra)
    if code == FILTERED:
        return Decision(False, reason=filters.reasons(t, c.fcode)[0].as_py(), **extra)
    return Decision(False, reason=reason_text(code, pool.threshold), **extra)


def _f(x) -> float | None:
    return float(x) if scored(x) else None
