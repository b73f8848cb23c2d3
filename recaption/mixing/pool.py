"""The pool pass: statistics, thresholds and outcome counts over every annotation file of a run.

Every consumer (mix, its dry run, the report, eval's strategy comparison) goes through here, so the
pool maths exists once. Work is per annotation file and the driver merges only small per-file
summaries, so memory does not grow with the pool:

1. stats: rows, errors, drop reasons of error rows, what each filter rule drops
   (`recaption.mixing.filters`), captioners, min/max of `sieve` and `clip_raw` over the rows that
   passed the filters;
2. selects: exact fraction thresholds (and medians) by radix select (`recaption.scoring.select`),
   one or a few passes that answer every pending select at once, over the rows that passed;
3. counts: the outcome of every row under one or several strategies, counted in one pass (dry
   run, side-by-side view, comparison).

Files are mapped as `recaption.mixing.files` describes: threads that keep numeric columns
between passes, or Ray tasks.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaption.errors import RecaptionError, reason_category
from recaption.io import annotations as ann
from recaption.mixing import columns as colmod
from recaption.mixing.columns import Columns
from recaption.engines.local import Threads
from recaption.mixing.files import AnnFile, Cache, annotation_files, load, read_file
from recaption.mixing.filters import FilterSet
from recaption.mixing.strategies import (CATEGORIES, KEEP_RAW, KEEP_SYN, MixConfig, PoolNumbers, blend_of,
                                         decide_columns)
from recaption.mixing.strategies.base import n_codes
from recaption.scoring.blend import MinMax, kept_rank, scored
from recaption.scoring.select import Select, answer, to_keys


# -- 1. stats --------------------------------------------------------------------------------
@dataclass
class FileStats:
    """What one annotation file adds to the pool: counts, min/max, drop reasons, filter counts."""

    rows: int = 0  # sample rows (a key)
    errors: int = 0  # of which not `ok`
    dropped: dict = field(default_factory=dict)  # category -> rows: error rows, shard errors
    shard_errors: list = field(default_factory=list)
    captioners: list = field(default_factory=list)
    sieve: MinMax = field(default_factory=lambda: MinMax(None, None))
    clip_raw: MinMax = field(default_factory=lambda: MinMax(None, None))
    filtered: np.ndarray | None = None  # per filter code (2*rule, 2*rule + 1): valid rows it dropped
    alone: np.ndarray | None = None  # per rule: valid rows it would drop on its own


def file_stats(f: AnnFile, synthetic: bool, filters: FilterSet | None = None, scores=None,
               cache: Cache | None = None) -> FileStats:
    """One file's part of the stats pass (and its numeric columns into the cache)."""
    scores = scores or {}
    t = read_file(f, colmod.columns_for(synthetic, filters=filters, scores=scores) + ["captioner", "error"],
                  counts_only=True, filters=filters, scores=scores)
    c = colmod.from_table(t, filters, f.removed, scores)
    if cache:
        cache.put(f.path, c)
    s = FileStats(rows=int(c.keyed.sum()), errors=int((c.keyed & ~c.ok).sum()))
    pool, valid = c.pool, c.valid
    s.sieve, s.clip_raw = MinMax.of(c.sieve[pool]), MinMax.of(c.clip_raw[pool])
    caps = t["captioner"].filter(pool)
    s.captioners = [x for x in pc.unique(caps).to_pylist() if x]
    if filters:
        s.filtered = np.bincount(c.fcode[valid & (c.fcode >= 0)], minlength=filters.n_codes).astype(np.int64)
        s.alone = np.array(filters.alone(t, valid), dtype=np.int64)
        s.dropped = {}
        for code in np.flatnonzero(s.filtered):
            k = filters.category(int(code))
            s.dropped[k] = s.dropped.get(k, 0) + int(s.filtered[code])
    if not valid.all():  # error rows: counted per distinct reason text, never row by row
        bad = pa.array(~valid)
        reasons = error_reasons(t["error"].filter(bad), c.keyed[~valid])
        counts = Counter(s.dropped)
        for vc in pc.value_counts(reasons).to_pylist():
            counts[reason_category(vc["values"])] += vc["counts"]
        s.dropped = dict(counts)
        s.shard_errors = [{"shard": f.name, "error": e} for e in t["error"].filter(pa.array(~c.keyed)).to_pylist()]
    return s


def error_reasons(error, keyed: np.ndarray):
    """The drop reason of rows dropped before any strategy: their error text, or a stand-in."""
    stand_in = pc.if_else(pa.array(keyed), pa.scalar("error"), pa.scalar("read: shard error"))
    return pc.if_else(error.is_valid(), error, stand_in)


@dataclass
class Pool:
    """The pool's numbers (min/max, threshold in force) and counts, from one pass over the annotations."""

    numbers: PoolNumbers
    n_rows: int
    captioners: list[str]
    ranges: dict = field(default_factory=dict)
    errors: int = 0
    dropped: dict = field(default_factory=dict)  # category -> rows dropped before any strategy
    shard_errors: list = field(default_factory=list)
    source: "PoolSource | None" = None
    filters: list = field(default_factory=list)  # per rule: {rule, dropped, lacking, alone}

    @property
    def removal(self):
        """What the duplicate and overlap rules removed (`recaption.mixing.removal.Removal`), or None."""
        return self.source.removal if self.source is not None else None


class PoolSource:
    """A run's annotation files and how to map over them (threads with a cache, or Ray), and the
    filter rules every pass applies before any strategy."""

    def __init__(self, files: list[AnnFile], missing: list[str] = (), mapper=None, synthetic: bool = True,
                 filters: FilterSet | None = None, scores: dict | None = None):
        self.files, self.missing = files, list(missing)
        # annotator score columns strategies cut on -> required (the chosen strategy's: a file
        # without it is an error) or not (the others', read as missing where a file lacks them);
        # by default every registered strategy's, none required (the side-by-side view, reports)
        self.scores = every_strategy_scores() if scores is None else dict(scores)
        self.mapper = mapper or Threads()
        self.cache = Cache() if getattr(self.mapper, "in_process", False) else None
        self.synthetic = synthetic  # read the candidates (needed for synthetic captions)
        self.filters = filters or FilterSet()
        self.removal = None  # set by `remove`: the files then carry their removed rows

    @classmethod
    def of_shards(cls, shards: list[str], ann_dir: str, mapper=None, synthetic: bool = True,
                  filters: FilterSet | None = None, scores: dict | None = None,
                  group: str | None = None) -> "PoolSource":
        """The annotation files of these input shards, read with `group` as the synthetic caption
        group (None: the unnamed one); one clear error when none is annotated."""
        from recaption.io.atomic import exists

        if not exists(ann_dir):
            raise RecaptionError(f"annotation folder not found: {ann_dir}")
        files, missing = annotation_files(shards, ann_dir)
        if not files:
            n = len(shards)
            raise RecaptionError(f"no annotation files in {ann_dir} for {'the' if n == 1 else 'these'} {n} "
                                 f"shard{'' if n == 1 else 's'} "
                                 "(NAME.parquet per NAME.tar): run `recaption annotate` or `score` first")
        if group is not None:  # several: a tuple, tried in order per row
            group = tuple(group) if isinstance(group, list) else group
            files = [dataclasses.replace(f, group=group) for f in files]
        return cls(files, missing, mapper, synthetic, filters, scores)

    @classmethod
    def of_folder(cls, ann_dir: str, names: list[str], mapper=None, filters: FilterSet | None = None) -> "PoolSource":
        """Named annotation files of a folder, without their input shards (reports)."""
        return cls([AnnFile(n, ann.path_for(ann_dir, n)) for n in names], [], mapper, filters=filters)

    def map(self, fn: Callable, *args, files: list[AnnFile] | None = None):
        """fn(file, *args, cache=...) over every file (or over `files`, the same files carrying
        more), results in order."""
        return self.mapper.map(functools.partial(_call, fn, args, self.cache), self.files if files is None else files)

    def remove(self, cfg: MixConfig, ann_dir: str) -> None:
        """Find the pool's evaluation overlaps and duplicates (`recaption.mixing.removal`), before any
        other pass: every later pass leaves them out of the pool."""
        from recaption.mixing import removal

        self.removal = removal.find(self, cfg, ann_dir)
        self.files = [dataclasses.replace(f, removed=self.removal.files.get(i)) for i, f in enumerate(self.files)]
        self.cache = Cache() if self.cache is not None else None

    def stats(self) -> Pool:
        """Merge every file's statistics into the pool's counts, ranges and filter counts."""
        total = FileStats()
        fl = self.filters
        filtered, alone = np.zeros(fl.n_codes, np.int64), np.zeros(len(fl.rules), np.int64)
        captioners: set[str] = set()
        for s in self.map(file_stats, self.synthetic, fl, self.scores):
            if fl:
                filtered += s.filtered
                alone += s.alone
            total.rows += s.rows
            total.errors += s.errors
            for k, v in s.dropped.items():
                total.dropped[k] = total.dropped.get(k, 0) + v
            total.shard_errors += s.shard_errors
            captioners.update(s.captioners)
            total.sieve, total.clip_raw = total.sieve.merge(s.sieve), total.clip_raw.merge(s.clip_raw)
        for k, v in (self.removal.counts if self.removal is not None else {}).items():
            total.dropped[k] = total.dropped.get(k, 0) + v
        shard_errors = [{"shard": n, "error": "no annotation file (shard not annotated)"} for n in self.missing]
        ranges = {"clip_raw": [total.clip_raw.lo, total.clip_raw.hi], "sieve": [total.sieve.lo, total.sieve.hi]}
        rules = [{"rule": r.label, "dropped": int(filtered[2 * i] + filtered[2 * i + 1]),
                  "lacking": int(filtered[2 * i + 1]), "alone": int(alone[i])} for i, r in enumerate(fl.rules)]
        return Pool(PoolNumbers(total.sieve, total.clip_raw, None), total.rows, sorted(captioners), ranges,
                    total.errors, total.dropped, shard_errors + total.shard_errors, self, rules)

    def select(self, wanted: list[tuple["Scores", Callable[[int], int | None]]]) -> list[float | None]:
        """The value at rank `rank_of(N)` of each score population, exactly; all in the same passes."""
        sels = [Select(rank_of) for _, rank_of in wanted]
        scores = [s for s, _ in wanted]
        while True:
            active = [(i, s.query()) for i, s in enumerate(sels) if not s.done]
            if not active:
                return [s.value for s in sels]
            for i, _ in active:
                sels[i].start()
            for parts in self.map(select_part, scores, active, self.synthetic, self.filters, self.scores):
                for (i, _), part in zip(active, parts):
                    sels[i].add(part)
            for i, _ in active:
                sels[i].finish()

    def counts(self, cfg: MixConfig, numbers: PoolNumbers, written: bool = False) -> "Outcomes":
        """Every row's outcome under `cfg`, counted; with `written`, also the sum of the CLIP
        scores of what would be written."""
        return self.counts_many([(cfg, numbers)], written)[0]

    def counts_many(self, jobs: list[tuple[MixConfig, PoolNumbers]], written: bool = False) -> list["Outcomes"]:
        """`counts` of several strategies in one pass over the files."""
        totals = [Outcomes() for _ in jobs]
        for per_file in self.map(file_outcomes, jobs, written, self.synthetic, self.filters, self.scores):
            for total, o in zip(totals, per_file):
                total.add(o)
        return totals


def every_strategy_scores() -> dict:
    """{annotator score column: False} of every registered strategy that cuts on one: what the
    side-by-side view reads (a file without it reads as missing there)."""
    from recaption.mixing.strategies.base import all_strategies, is_extra_column

    return {s.column: False for s in all_strategies() if is_extra_column(s.column)}


def _call(fn, args, cache, f):
    return fn(f, *args, cache=cache)


# -- 2. selects ------------------------------------------------------------------------------
@dataclass
class Scores:
    """A score population: one column over the pool rows, or what a strategy would write."""
    column: str  # clip_raw | clip_synthetic | blend | written | an annotator's score column
    numbers: PoolNumbers | None = None
    alpha: float = 0.5
    cfg: MixConfig | None = None

    def of(self, c: Columns) -> np.ndarray:
        """This score for the rows of one file that a fraction is taken over (NaN where missing)."""
        if self.column == "written":
            d = decide_columns(c, self.cfg, self.numbers)
            v = _written(c, d.code)
        elif self.column == "blend":
            v = blend_of(c, self.numbers, self.alpha)[c.pool]
        else:  # clip_raw, clip_synthetic, or an annotator's column read for a strategy
            v = c.score(self.column)[c.pool]
        v = np.asarray(v, dtype=np.float64)
        return v[scored(v)]


def _written(c: Columns, code: np.ndarray) -> np.ndarray:
    syn = c.clip_syn if c.clip_syn is not None else np.full(c.n, np.nan)
    return np.where(code == KEEP_RAW, c.clip_raw, np.where(code == KEEP_SYN, syn, np.nan))


def select_part(f: AnnFile, scores: list[Scores], active, synthetic: bool, filters=None, read=None,
                cache=None) -> list:
    """One file's answers to the pending selects."""
    c = load(f, synthetic, cache, filters, read)
    keys: dict[int, np.ndarray] = {}  # by population: the two ranks of a median share one
    out = []
    for i, q in active:
        k = id(scores[i])
        if k not in keys:
            keys[k] = to_keys(scores[i].of(c))
        out.append(answer(keys[k], q))
    return out


def fraction_rank(fraction: float) -> Callable[[int], int]:
    """DataComp's rule as a rank: the n-th highest of N, n = int(N * fraction)."""
    return functools.partial(_fraction_rank, fraction)


def _fraction_rank(fraction: float, n: int) -> int:
    return kept_rank(n, fraction)


def median_ranks() -> tuple[Callable, Callable]:
    """Ranks of the two middle values (the same one for odd N): their mean is the median."""
    return _lower_middle, _upper_middle


def _lower_middle(n: int) -> int:
    return (n - 1) // 2


def _upper_middle(n: int) -> int:
    return n // 2


# -- 3. outcomes -----------------------------------------------------------------------------
@dataclass
class Outcomes:
    """Counts of every outcome code over the files, and the kept count of each file."""

    codes: np.ndarray = field(default_factory=lambda: np.zeros(n_codes(), dtype=np.int64))
    written_sum: float = 0.0
    written_n: int = 0
    kept_per_file: list = field(default_factory=list)
    groups: dict = field(default_factory=dict)  # several synthetic groups: group -> [read, written, synthetic]

    def add(self, o: "Outcomes") -> None:
        """Add another file's outcomes."""
        self.codes += o.codes
        self.written_sum = math.fsum([self.written_sum, o.written_sum])
        self.written_n += o.written_n
        self.kept_per_file += o.kept_per_file
        for g, n in o.groups.items():
            self.groups[g] = [a + b for a, b in zip(self.groups.get(g, [0, 0, 0]), n)]

    @property
    def raw(self) -> int:
        """Samples kept with their alt-text."""
        return int(self.codes[KEEP_RAW])

    @property
    def synthetic(self) -> int:
        """Samples kept with a synthetic caption."""
        return int(self.codes[KEEP_SYN])

    def by_category(self) -> dict[str, int]:
        """Drops and errors per summary category (reason words without numbers)."""
        out: dict[str, int] = {}
        for code, name in CATEGORIES.items():
            if self.codes[code]:
                out[name] = out.get(name, 0) + int(self.codes[code])
        return out


def file_outcomes(f: AnnFile, jobs: list[tuple[MixConfig, PoolNumbers]], written: bool, synthetic: bool,
                  filters=None, scores=None, cache=None) -> list[Outcomes]:
    """One file's outcome counts under each (config, numbers) job."""
    c = load(f, synthetic, cache, filters, scores)
    out = []
    for cfg, numbers in jobs:
        code = decide_columns(c, cfg, numbers).code
        o = Outcomes(np.bincount(code, minlength=n_codes()).astype(np.int64))
        o.kept_per_file = [int(o.codes[KEEP_RAW] + o.codes[KEEP_SYN])]
        o.groups = group_counts(c, code)
        if written:
            v = _written(c, code)
            v = v[scored(v)]
            o.written_sum, o.written_n = float(np.sum(v, dtype=np.float64)), int(v.size)
        out.append(o)
    return out


def group_counts(c: Columns, code: np.ndarray) -> dict:
    """Read for several synthetic groups: per group, in order, the sample rows whose synthetic
    caption it gave, of them the kept ones, and those kept with it in `txt` ({} for one group)."""
    if c.syn_group is None:
        return {}
    kept, syn = code <= KEEP_SYN, code == KEEP_SYN
    by = np.where(c.keyed, c.syn_group, -1)
    return {g: [int(np.count_nonzero(by == i)), int(np.count_nonzero((by == i) & kept)),
                int(np.count_nonzero((by == i) & syn))] for i, g in enumerate(c.groups)}


# -- the pool pass of one mix ----------------------------------------------------------------
def threshold_scores(cfg: MixConfig, numbers: PoolNumbers) -> Scores:
    """The score a strategy's threshold applies to, as the radix select reads it."""
    return Scores(cfg.threshold_column, numbers, cfg.alpha)


def pool_pass(shards: list[str], ann_dir: str, cfg: MixConfig, mapper=None, synthetic: bool | None = None,
              compare: bool = False) -> Pool:
    """Min/max and the threshold in force for `cfg`, over the pool left after its filters, evaluation
    overlaps and duplicates; raises when no shard is annotated. `synthetic`: read the candidates
    even where `cfg` does not need them; `compare`: read what every registered strategy cuts on
    too (the side-by-side view of a dry run)."""
    scores = (every_strategy_scores() if compare else {}) | dict.fromkeys(cfg.score_columns, True)
    source = PoolSource.of_shards(shards, ann_dir, mapper, cfg.needs_synthetic if synthetic is None else synthetic,
                                  cfg.filter_set, scores, cfg.synthetic_group)
    if cfg.removes:
        source.remove(cfg, ann_dir)
    return finish_pool(source.stats(), cfg)


def finish_pool(pool: Pool, cfg: MixConfig) -> Pool:
    """Set the threshold of `cfg` on a pool whose stats are known."""
    pool.numbers.threshold = cfg.threshold
    if cfg.fraction is not None:
        col = cfg.threshold_column
        (t,) = pool.source.select([(threshold_scores(cfg, pool.numbers), fraction_rank(cfg.fraction))])
        if t is None:
            raise RecaptionError(f"--fraction needs {col} scores, and no annotated sample has one; run "
                                 "`recaption score` with the scorer this strategy uses")
        pool.numbers.threshold = t
    if cfg.kind.needs_threshold and pool.numbers.threshold is None:
        raise RecaptionError(f"strategy {cfg.strategy!r} has no threshold")
    return pool


def mix_counts(pool: Pool, o: Outcomes) -> dict:
    """The counts a mix summary reports; drop reasons most frequent first."""
    dropped = dict(pool.dropped)
    for k, v in o.by_category().items():
        dropped[k] = dropped.get(k, 0) + v
    out = {"read": pool.n_rows, "kept": o.raw + o.synthetic, "raw": o.raw, "synthetic": o.synthetic,
           "errors": pool.errors, "dropped": dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
           "shard_errors": pool.shard_errors, "filters": pool.filters}
    if o.groups:  # several synthetic groups: the rows each gave the synthetic caption of
        out["synthetic_groups"] = {g: dict(zip(("read", "written", "synthetic"), n)) for g, n in o.groups.items()}
    return out


def dry_counts(pool: Pool, cfg: MixConfig) -> tuple[dict, int]:
    """What a mix would do, from the annotation files alone: counts and output shard count."""
    o = pool.source.counts(cfg, pool.numbers)
    counts = mix_counts(pool, o)
    if cfg.keep_sharding:
        n_out = len(o.kept_per_file)
    else:
        n_out = -(-counts["kept"] // cfg.samples_per_shard)
    return counts, n_out
