"""What a mixing strategy is: the contract every strategy fills in, the outcome codes, and the
table of registered strategies (`recaption.mixing.STRATEGIES`) loaded as objects.

A strategy is a small class: what it needs (a threshold or fraction, the synthetic caption), the
score column its threshold cuts, the members it adds to a kept sample, its rows in the
side-by-side view, its drop reasons, and `decide`, its rule over one file's columns. The pool
pass, the plan, the comparison, the members of a kept sample and `MixConfig.validate` read these
declarations; none of them names a strategy.

Every row gets one outcome code (uint8): kept with the raw or the synthetic caption, dropped
before any strategy (an error row, a shard error, a filter rule, an evaluation-set overlap, a
duplicate), or dropped by one of a strategy's own reasons. Reason codes are allocated from the
registry, in registration order, when the table is loaded; codes are never stored (decisions files
hold the reason text), so only a process's own table must agree with itself.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

from recaption import mixing
from recaption.errors import RecaptionError
from recaption.scoring.blend import scored

KEEP_RAW, KEEP_SYN, ERROR, SHARD_ERROR, FILTERED = 0, 1, 2, 3, 4  # FILTERED: which rule is in `Columns.fcode`
DUPLICATE, OVERLAP = 5, 6  # a duplicate of a kept sample, a copy of an evaluation image (`recaption.mixing.removal`)
FIRST_REASON = 7  # the strategies' own drop reasons follow

COLUMNS = ("clip_raw", "clip_synthetic", "blend")  # the pool's own scores; or any numeric annotator column
NUMERIC = ("float32", "float64", "int32", "int64")  # the annotator column types a strategy may cut on
FLAGS = ("filter_synthetic",)  # MixConfig settings only some strategies take: those whose variants set them
MEMBER_SOURCES = ("synthetic_caption",)  # the decisions columns an extra member can hold

# reasons several strategies drop for, worded once (summaries count them by these words)
NO_RAW = "mix: no raw caption"
NO_SYN_CLIP = "mix: no CLIP score for the synthetic caption"


class Strategy:
    """A mixing strategy. Subclass it, declare what differs from these defaults, write `decide`,
    and register the class in `recaption/mixing/__init__.py` (`register_strategy`)."""

    needs_threshold: bool = False  # refuses to run without --threshold or --fraction
    column: str = "clip_raw"  # the score a threshold cuts and a fraction is taken over (COLUMNS, or a
    # numeric column an annotator declares: the pool pass reads it, `rows.score()` gives it)
    needs_synthetic: bool = False  # decisions read the synthetic caption (else the pool pass skips candidates)
    extra_members: dict = {}  # member name -> decisions column (MEMBER_SOURCES) a kept sample also gets
    variants: tuple = ({},)  # settings of FLAGS per row of the side-by-side view (`{}`: as the strategy is)
    reasons: dict = {}  # drop reason key -> its text; `{t:.4f}` is replaced by the threshold in force

    # set when the table loads it
    name: str = ""
    help: str = ""
    codes: dict = {}  # reason key -> outcome code

    def decide(self, rows: "Rows") -> None:
        """Set the outcome of one file's rows: `rows.use_synthetic` and `rows.cut` (every row
        starts kept with its raw caption; error, shard-error and filtered rows are overridden
        afterwards, whatever the strategy said)."""
        raise NotImplementedError

    @property
    def flags(self) -> set[str]:
        """The FLAGS this strategy takes (set by one of its variants)."""
        return {k for v in self.variants for k, on in v.items() if on}


class Rows:
    """One annotation file's rows while a strategy decides them: the columns
    (`recaption.mixing.columns.Columns`), the mix settings, the threshold in force, the blend, and
    the outcome codes so far."""

    def __init__(self, cols, cfg, threshold: float | None, blend: np.ndarray, strategy: Strategy, dtype):
        self.cols, self.cfg, self.threshold, self.blend = cols, cfg, threshold, blend
        self.strategy = strategy
        self.code = np.full(cols.n, KEEP_RAW, dtype=dtype)

    @property
    def kept(self) -> np.ndarray:
        """Rows still kept (with either caption)."""
        return self.code <= KEEP_SYN

    def use_synthetic(self, where=True) -> None:
        """Rows of `where` still kept take the synthetic caption."""
        self.code[self.kept & where] = KEEP_SYN

    def cut(self, where, reason: str) -> None:
        """Drop the rows of `where` still kept for `reason` (a key of the strategy's `reasons`):
        the first cut of a row wins."""
        self.code[self.kept & where] = self.strategy.codes[reason]

    def score(self, column: str | None = None) -> np.ndarray:
        """A score column of these rows (default: the strategy's `column`), NaN where missing:
        `clip_raw`, `clip_synthetic`, `blend`, or the annotator's column the strategy cuts on."""
        column = column or self.strategy.column
        return self.blend if column == "blend" else self.cols.score(column)

    def cut_scores(self, x: np.ndarray, missing: str, below: str, where=True) -> None:
        """Drop rows of `where` whose score `x` is missing (`missing`), then those below the
        threshold (`below`). A missing score (null, NaN, inf) fails every cut."""
        if self.threshold is None:
            raise RecaptionError(f"strategy {self.strategy.name!r} has no threshold")
        self.cut(where & ~scored(x), missing)
        with np.errstate(invalid="ignore"):
            self.cut(where & (x < self.threshold), below)

    def synthetic(self) -> tuple[np.ndarray, np.ndarray]:
        """(has a synthetic caption, its CLIP score) per row; the strategy must declare `needs_synthetic`
        or run where the candidates were read."""
        if self.cols.has_syn is None:
            raise RecaptionError("internal: this strategy needs the captions columns, which were not read")
        return self.cols.has_syn, self.cols.clip_syn


# -- the table of registered strategies -----------------------------------------------------
class _Table:
    """The registered strategies as objects, with their outcome codes allocated in order."""

    def __init__(self, changes: int):
        self.changes = changes
        self.by_name: dict[str, Strategy] = {}
        self.reasons: list[str | None] = [None] * FIRST_REASON  # by code
        for name in mixing.STRATEGIES.names():
            s = _load(name)
            s.codes = {k: len(self.reasons) + i for i, k in enumerate(s.reasons)}
            self.reasons += list(s.reasons.values())
            self.by_name[name] = s
        self.dtype = np.uint8 if len(self.reasons) <= 256 else np.uint16
        self.texts = {c: r for c, r in enumerate(self.reasons) if r is not None}
        self.categories = {c: category(r) for c, r in self.texts.items()}


def is_extra_column(column: str) -> bool:
    """Whether a strategy's column is an annotator's (read for it), not one of the pool's own."""
    return column not in COLUMNS


def cuttable() -> list[str]:
    """Every score a strategy may cut on: the pool's own, then each numeric annotator column."""
    from recaption import annotators

    fixed = set(annotators.fixed_names())
    return list(COLUMNS) + [c.name for c in annotators.extra_columns() if c.type in NUMERIC and c.name not in fixed]


def _load(name: str) -> Strategy:
    cls = mixing.STRATEGIES.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise RecaptionError(f"strategy {name!r}: {mixing.STRATEGIES.target(name)} is not a Strategy class")
    s = cls()
    s.name, s.help = name, mixing.strategy_help(name)
    can = cuttable()
    bad = ([f"column {s.column!r} (one of {', '.join(can)}: the pool's scores or a numeric annotator column)"]
           if s.column not in can else []) + \
          [f"extra member {m!r} from {c!r} (one of {', '.join(MEMBER_SOURCES)})"
           for m, c in s.extra_members.items() if c not in MEMBER_SOURCES] + \
          [f"variant setting {k!r} (one of {', '.join(FLAGS)})" for v in s.variants for k in v if k not in FLAGS]
    if bad or not s.variants:
        raise RecaptionError(f"strategy {name!r} declares " + ("; ".join(bad) or "no variant"))
    return s


_table: _Table | None = None
_lock = threading.Lock()


def table() -> _Table:
    """The loaded table, reloaded when the registry changed."""
    global _table
    t = _table
    if t is None or t.changes != mixing.registry_changes():
        with _lock:
            if _table is None or _table.changes != mixing.registry_changes():
                _table = _Table(mixing.registry_changes())
            t = _table
    return t


def named(name: str) -> Strategy:
    """The registered strategy `name`, as an object."""
    s = table().by_name.get(name)
    if s is None:
        raise mixing.STRATEGIES.unknown(name)
    return s


def all_strategies() -> list[Strategy]:
    """Every registered strategy, in registration order."""
    return list(table().by_name.values())


def n_codes() -> int:
    """How many outcome codes there are (for counting them with bincount)."""
    return len(table().reasons)


def category(text: str) -> str:
    """A drop reason's summary category: the reason without its threshold or parenthesised detail."""
    return text.replace(" {t:.4f}", "").split(" (", 1)[0]


def reason_text(code: int, threshold: float | None) -> str:
    """The drop reason of a strategy's outcome code, with the threshold in force where it has one."""
    r = table().reasons[code]
    return r.format(t=threshold) if threshold is not None else r.replace(" {t:.4f}", "")


class ReasonTable(Mapping):
    """code -> reason text (`REASONS`) or summary category (`CATEGORIES`) of every strategy's
    own drop reasons, as the table stands when read."""

    def __init__(self, categories: bool):
        self._categories = categories

    def _items(self) -> dict[int, str]:
        t = table()
        return t.categories if self._categories else t.texts

    def __getitem__(self, code: int) -> str:
        return self._items()[code]

    def __iter__(self):
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


REASONS = ReasonTable(categories=False)
CATEGORIES = ReasonTable(categories=True)
