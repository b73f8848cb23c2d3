"""Mixing strategies (docs/formats.md#mixing-strategies), decided for a whole annotation file at once.

Every row gets one outcome code: kept with the raw or the synthetic caption, or dropped for one
named reason. A missing score (null, NaN, inf) fails every cut (docs/formats.md#missing-scores).
Each strategy is an object (`base.Strategy`, one module each here, registered in
`recaption.mixing`); `MixConfig` holds the settings and `decide_columns` applies the chosen
strategy and then what overrides every strategy (errors, filter rules). `decide(row, ...)` is the
same decision for one row given as a dict (tests, notebooks).
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field

import numpy as np

from recaption.errors import RecaptionError, unknown
from recaption.mixing.strategies.base import (CATEGORIES, DUPLICATE, ERROR, FILTERED, FLAGS, KEEP_RAW,  # noqa: F401
                                              KEEP_SYN, OVERLAP, REASONS, SHARD_ERROR, Rows, Strategy, named,
                                              reason_text, table)  # (re-exported)
from recaption.mixing import CAPTION_KEYS, STRATEGIES  # noqa: F401  (re-exported)
from recaption.scoring.blend import MinMax, blend_array, scored


@dataclass
class MixConfig:
    """How to mix: strategy, threshold or fraction, blend weight, filters, output sharding."""

    strategy: str = "threshold"
    threshold: float | None = None
    fraction: float | None = None
    filter_synthetic: bool = False
    alpha: float = 0.5
    samples_per_shard: int = 10000
    keep_sharding: bool = False
    filters: dict = field(default_factory=dict)  # rule -> value, in order (recaption.mixing.filters)
    caption_keys: str = "none"  # captions under top-level json keys: none, best, all (recaption.output.caption_keys)
    synthetic_group: str | None = None  # the named caption group the synthetic caption comes from (None: unnamed)
    json_tags: list = field(default_factory=list)  # tag columns as top-level json keys (output.caption_keys.TAGS)
    # duplicates and evaluation-set overlap, removed after the filters (recaption.dedup.options, .removal)
    dedup: dict = field(default_factory=dict)  # rule -> value, in run order: exact, phash (bits), embedding (cosine)
    dedup_keep: str = "first"  # which sample of a group stays: first (input order) or best:COLUMN
    decontaminate: str | None = None  # EVAL: a folder of images and/or shards, or shards as INPUT takes them
    decontaminate_rules: dict = field(default_factory=dict)  # as dedup; exact and phash=8 when EVAL is given alone
    decontaminate_model: str | None = None  # where the pool embeddings' CLIP model loads from here (NAME[@PRETRAINED])

    def validate(self) -> "MixConfig":
        """Check the settings together; one error line naming the option that is wrong. Returns self."""
        from recaption.dedup import options as dedup_options
        from recaption.mixing.filters import normalize

        self.filters = normalize(self.filters)
        self.dedup = dedup_options.normalize(self.dedup)
        self.dedup_keep = self.dedup_keep or "first"
        dedup_options.keep_column(self.dedup_keep)
        if self.dedup_keep != "first" and not self.dedup:
            raise RecaptionError("--dedup-keep chooses among duplicates: give --dedup too")
        self.decontaminate_rules = dedup_options.normalize(self.decontaminate_rules, overlap=True)
        if not self.decontaminate and (self.decontaminate_rules or self.decontaminate_model):
            raise RecaptionError("--decontaminate-rule and --decontaminate-model need --decontaminate EVAL")
        if self.decontaminate and not self.decontaminate_rules:
            self.decontaminate_rules = dict(dedup_options.DEFAULT_OVERLAP)
        if self.decontaminate_model and "embedding" not in self.decontaminate_rules:
            raise RecaptionError("--decontaminate-model is the model of the embedding rule: add "
                                 "--decontaminate-rule embedding=COSINE")
        kind = self.kind  # an unknown name is one line listing the registered ones
        if self.threshold is not None and self.fraction is not None:
            raise RecaptionError("give --threshold or --fraction, not both")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise RecaptionError(f"--fraction must be within [0, 1], got {self.fraction}")
        if kind.needs_threshold and self.threshold is None and self.fraction is None:
            raise RecaptionError(f"strategy {self.strategy!r} needs --threshold or --fraction")
        for flag in FLAGS:
            if getattr(self, flag) and flag not in kind.flags:
                takers = " or ".join(f"--strategy {s.name}" for s in table().by_name.values() if flag in s.flags)
                raise RecaptionError(f"--{flag.replace('_', '-')} only applies to {takers}")
        if not 0.0 <= self.alpha <= 1.0:
            raise RecaptionError(f"--alpha must be within [0, 1], got {self.alpha}")
        if self.threshold is not None and not math.isfinite(self.threshold):  # would fail every cut, or none
            raise RecaptionError(f"--threshold must be a finite number, got {self.threshold}")
        if self.samples_per_shard < 1:
            raise RecaptionError("--samples-per-shard must be at least 1")
        if self.caption_keys not in CAPTION_KEYS:
            raise unknown("--caption-keys value", self.caption_keys, CAPTION_KEYS)
        self.json_tags = json_tag_names(self.json_tags)
        if self.synthetic_group is not None:
            from recaption.annotators.groups import check_name

            try:
                check_name(self.synthetic_group)
            except RecaptionError as e:
                raise RecaptionError(f"--synthetic-group: {e}") from None
        return self

    @property
    def kind(self) -> Strategy:
        """The strategy as an object (`base.Strategy`): what it needs, cuts on and decides."""
        return named(self.strategy)

    @property
    def threshold_column(self) -> str:
        """Which score a --fraction is taken over."""
        return self.kind.column

    @property
    def score_columns(self) -> tuple[str, ...]:
        """The annotator score column the strategy cuts on, where it is not one of the pool's own
        (the pool pass reads it, and a file without it is an error)."""
        from recaption.mixing.strategies.base import is_extra_column

        return (self.kind.column,) if is_extra_column(self.kind.column) else ()

    @property
    def filter_set(self):
        """The rules as a `recaption.mixing.filters.FilterSet` (empty: none)."""
        from recaption.mixing.filters import FilterSet

        return FilterSet.of(self.filters)

    def __getstate__(self) -> dict:
        # the kinds of its filter rules travel with a pickled config, so a Ray task or worker
        # process evaluates a rule of an annotator registered at run time in the driver
        from recaption.mixing.rules import kinds

        known = kinds()
        names = self.filters if isinstance(self.filters, dict) else {}
        return {**self.__dict__, "__rule_kinds__": {n: known[n] for n in names if n in known}}

    def __setstate__(self, state: dict) -> None:
        from recaption.mixing.rules import remember

        remember(state.pop("__rule_kinds__", {}))
        self.__dict__.update(state)

    @property
    def removes(self) -> bool:
        """Whether duplicates or evaluation-set overlaps are removed before the strategy."""
        return bool(self.dedup or self.decontaminate)

    @property
    def needs_synthetic(self) -> bool:
        """Whether decisions depend on the synthetic caption (else its candidates need not be read)."""
        return self.kind.needs_synthetic


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


def json_tag_names(given) -> list[str]:
    """`--json-tags` as a list of tag columns (repeated or comma-separated, in order, once each); a
    name that is no tag column is one line naming the nearest ones."""
    from recaption.annotators import tag_columns

    if isinstance(given, str):
        given = [given]
    names = list(dict.fromkeys(n.strip() for g in (given or []) for n in str(g).split(",") if n.strip()))
    known = tag_columns()
    bad = next((n for n in names if n not in known), None)
    if bad is not None:
        raise unknown("--json-tags column", bad, known)
    return names
