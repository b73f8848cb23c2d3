"""One annotation file as the numpy columns the mixing maths needs (no Python object per row).

`Columns` holds, per row: whether it has a key and is `ok`, whether it has a raw caption, the
scores as float (NaN = missing, whatever the file held: null, NaN or inf), whether a synthetic
caption exists, which candidate it is and its CLIP score, and which filter rule (if any) drops
it (`recaption.mixing.filters`). Only the parquet columns a job needs
are read: the `captions` strings are the costly ones, and strategies that never write a
synthetic caption do not read them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io import arrays
from recaption.scoring.blend import score_column

BASE = ["key", "status", "raw_caption", "clip_raw", "sieve"]
SYNTHETIC = ["captions", "clip_captions"]


def columns_for(synthetic: bool, text: bool = False, filters=None, scores=()) -> list[str]:
    """The annotation columns to read: numbers always; candidates when a synthetic caption
    matters; what a written sample carries (texts, captioner, error) when `text`; the filter
    metrics the rules of `filters` (a `recaption.mixing.filters.FilterSet`) test; the annotator
    score columns strategies cut on (`scores`, beyond the fixed ones)."""
    cols = BASE + (SYNTHETIC if synthetic or text else [])
    cols = cols + (["captioner", "error"] if text else []) + (filters.columns if filters else [])
    return cols + [c for c in scores if c not in cols]


def score_group(column: str) -> str | None:
    """The annotator group that writes a score column (None: a fixed column)."""
    from recaption import annotators

    return next((a.name for a in annotators.classes() if column in {c.name for c in a.columns}), None)


@dataclass
class Columns:
    """One annotation file as numpy columns: what every mix decision reads, no Python object per row."""

    keyed: np.ndarray  # bool: a sample row (a null key is a shard-level read error)
    ok: np.ndarray  # bool: status == "ok"
    has_raw: np.ndarray  # bool
    clip_raw: np.ndarray  # float, NaN = missing; NaN also where there is no raw caption
    sieve: np.ndarray  # float, NaN = missing
    has_syn: np.ndarray | None = None  # bool: at least one candidate (None: not read)
    syn_idx: np.ndarray | None = None  # int: index of the synthetic caption, -1 none
    clip_syn: np.ndarray | None = None  # float (the file's float type), NaN = missing
    fcode: np.ndarray | None = None  # int16 filter outcome: -1 passed, else the rule's code (None: no rules)
    removed: np.ndarray | None = None  # uint8: 0, or the outcome of a duplicate or overlap (None: none removed)
    syn_group: np.ndarray | None = None  # int8: which of `groups` gave the synthetic caption, -1 none (None: one group)
    groups: tuple = ()  # the synthetic groups read, in order, where more than one is (`read_first_of`)
    extra: dict = field(default_factory=dict)  # annotator score column -> float, NaN = missing (what strategies cut)

    @property
    def n(self) -> int:
        """Rows in the file, error rows included."""
        return len(self.keyed)

    @property
    def nbytes(self) -> int:
        """Bytes the arrays hold (what the column cache counts against its budget)."""
        arrays_ = [a for a in vars(self).values() if isinstance(a, np.ndarray)] + list(self.extra.values())
        return sum(a.nbytes for a in arrays_)

    def score(self, column: str) -> np.ndarray:
        """A score column by name: `clip_raw`, `clip_synthetic`, or an annotator's column read
        for a strategy (an unknown or unread one is an error naming it)."""
        if column == "clip_raw":
            return self.clip_raw
        if column == "clip_synthetic":
            if self.clip_syn is None:
                raise RecaptionError("internal: clip_synthetic was asked for but the candidates were not read")
            return self.clip_syn
        if column not in self.extra:
            raise RecaptionError(f"internal: score column {column!r} was not read "
                                 f"(read: clip_raw, clip_synthetic{''.join(', ' + k for k in self.extra)})")
        return self.extra[column]

    @property
    def valid(self) -> np.ndarray:
        """Sample rows annotated without error."""
        return self.keyed & self.ok

    @property
    def pool(self) -> np.ndarray:
        """Rows that count for pool statistics and thresholds: valid rows that pass the filters and
        are neither a duplicate nor an evaluation overlap."""
        p = self.valid if self.fcode is None else self.valid & (self.fcode < 0)
        return p if self.removed is None else p & (self.removed == 0)


def group_names(group) -> tuple[str, ...]:
    """The named caption groups a read takes the synthetic caption from, in order (a name, a list
    of names, or None: the unnamed group, `()`)."""
    if group is None:
        return ()
    return (group,) if isinstance(group, str) else tuple(group)


def read(url: str, columns: list[str], counts_only: bool = False, filters=None, scores=None,
         group: str | tuple | list | None = None) -> pa.Table:
    """Columns of one annotation file, decoded in this thread (the pool pass reads files in
    parallel). `counts_only`: the candidates' text is not needed, only how many there are.
    A file that records a re-ranking chain also gives its pick, the synthetic caption. Where
    `filters` test the filter metrics, a file that never computed them is one line naming it.
    `scores` ({column: required}): an annotator's score column a strategy cuts on; a file whose
    group was never computed is one line naming it where the column is required, and reads as
    all missing where not (every other strategy of the side-by-side view). `group`: the named
    caption group whose candidates, captioner and scores stand for the synthetic caption's (read
    under the unnamed group's names; a file without it is one line naming it); several names:
    per row, the first of them with a candidate there (`read_first_of`)."""
    names = group_names(group)
    if len(names) > 1:
        return read_first_of(url, columns, names, counts_only, filters, scores)
    group = names[0] if names else None
    blank: list[str] = []  # the group's score columns a file without its scores lacks: read as not computed

    def choose(meta, cols):
        held = (meta or {}).get("groups") or {}
        if group is not None:
            if f"captions.{group}" not in held:
                raise missing_group_error(url, group, held)
            for base, own in UNSCORED:
                if f"{base}.{group}" not in held:
                    blank.extend(c for c in cols if c in own)
            cols = [c for c in cols if c not in blank]
            meta = {**meta, "groups": {g: s for g, s in held.items() if g != "clip"}}
            if f"clip.{group}" in held:
                meta["groups"]["clip"] = held[f"clip.{group}"]
        cols = _checked(url, held, cols, filters, scores)
        cols = _scores_pair(meta, cols) if counts_only else cols
        reranked = group is None and "rerank" in ((meta or {}).get("groups") or {})
        cols = cols + ["rerank_pick"] if reranked and "clip_captions" in cols else cols
        return [stored_name(c, group) for c in cols]

    t = ann.read(url, columns=columns, threads=False, choose=choose)
    if group is None:
        return t
    t = t.rename_columns([unnamed(c, group) for c in t.column_names])
    if blank:
        for c in blank:
            t = t.append_column(pa.field(c, _blank_type(c)), _blank(c, t.num_rows))
    return t


# a named group's score columns that read as not computed where the file lacks that group's scores
UNSCORED = (("clip", ("clip_captions",)), ("sieve", ("sieve", "sieve_mean", "sieve_best")))
CHOSEN = "synthetic_group"  # the column `read_first_of` adds: which listed group each row's columns came from


def _blank_type(column: str) -> pa.DataType:
    from recaption.annotators import column_type
    from recaption.annotators.base import arrow_type

    return arrow_type(column_type(column))


def _blank(column: str, n: int) -> pa.Array:
    from recaption.annotators import blanks

    return pa.array([blanks()[column]] * n, _blank_type(column))


def _checked(url: str, held: dict, cols: list[str], filters, scores) -> list[str]:
    """`cols` less the optional score columns a file lacks; a file lacking what the filter rules
    or the strategy's required score read is one line naming it."""
    for rule_group in (filters.groups if filters else ()):
        if rule_group not in held:
            raise missing_metrics_error(url, rule_group)
    for col, required in (scores or {}).items():
        owner = score_group(col)
        if owner is not None and owner not in held:
            if required:
                raise missing_scores_error(url, col, owner)
            cols = [c for c in cols if c != col]
    return cols


def read_first_of(url: str, columns: list[str], groups: tuple[str, ...], counts_only: bool = False,
                  filters=None, scores=None) -> pa.Table:
    """`read` with several synthetic groups: per row, the group columns asked for (candidates,
    captioner, CLIP and SIEVE scores, under the unnamed group's names) are those of the first of
    `groups` with a candidate in that row, the first group's where none has one; `CHOSEN` says
    which (a dictionary column over `groups`, null where none has a candidate). Every listed
    group's own columns stay under their stored names (what the annotation digest covers); a
    file lacking one of the groups is one line naming it. Column-wise: `pc.if_else` per group."""
    from recaption.annotators.groups import GROUP_COLUMNS

    blank: set[tuple[str, str]] = set()  # (column, group) a file without the group's scores lacks
    made: list[str] = []  # the unnamed columns to make from the groups'
    counted: dict[str, str] = {}  # group -> its column whose list lengths count its candidates

    def choose(meta, cols):
        held = (meta or {}).get("groups") or {}
        for g in groups:
            if f"captions.{g}" not in held:
                raise missing_group_error(url, g, held)
        cols = _checked(url, held, cols, filters, scores)
        for g in groups:
            for base, own in UNSCORED:
                if f"{base}.{g}" not in held:
                    blank.update((c, g) for c in own)
        # every group's scores pair with its candidates: their counts are in clip_captions (`_scores_pair`)
        paired = all(f"clip.{g}" in held for g in groups)
        no_text = counts_only and paired and "clip_captions" in cols
        made.extend(c for c in cols if c in GROUP_COLUMNS and not (no_text and c == "captions"))
        for g in groups:  # without the text (or its scores) asked for, a group's counts are read all the same
            counted[g] = stored_name("captions" if "captions" in made or not paired else "clip_captions", g)
        out = [c for c in cols if c not in GROUP_COLUMNS]
        out += [stored_name(c, g) for c in made for g in groups if (c, g) not in blank]
        return list(dict.fromkeys(out + list(counted.values())))

    t = ann.read(url, columns=columns, threads=False, choose=choose)
    n = t.num_rows
    first = np.full(n, -1, dtype=np.int8)
    for i in range(len(groups) - 1, -1, -1):  # the first group with a candidate wins: filled from the last
        lens = pc.fill_null(pc.list_value_length(_list(t[counted[groups[i]]])), 0).to_numpy(zero_copy_only=False)
        first[lens > 0] = i
    masks = [pa.array(first == i) for i in range(len(groups))]
    for c in made:
        parts = [arrays.one(t[stored_name(c, g)]) if (c, g) not in blank else _blank(c, n) for g in groups]
        col = parts[0]
        for i in range(1, len(groups)):
            col = pc.if_else(masks[i], parts[i].cast(col.type), col)
        t = t.append_column(c, col)
    chosen = pa.DictionaryArray.from_arrays(pa.array(first, pa.int8(), mask=first < 0), pa.array(groups, pa.string()))
    return t.append_column(CHOSEN, chosen)


def stored_name(column: str, group: str | None) -> str:
    """The column a mix reads for `column` where `group` is its synthetic group."""
    from recaption.annotators.groups import GROUP_COLUMNS, column as group_column

    return group_column(column, group) if group is not None and column in GROUP_COLUMNS else column


def unnamed(column: str, group: str | None) -> str:
    """A column read for `group` under the unnamed group's name (`captions__long` -> `captions`)."""
    from recaption.annotators.groups import SEP

    suffix = f"{SEP}{group}"
    return column[: -len(suffix)] if group is not None and column.endswith(suffix) else column


def as_stored(t: pa.Table, group, url: str | None = None) -> pa.Table:
    """A table read for `group` with the names its columns have in the file `url` (for its
    digest): the group's scores a file without them read as not computed are left out. Read for
    several groups, the columns made from theirs are left out: their own are in the table."""
    names = group_names(group)
    if not names:
        return t
    if len(names) > 1:
        from recaption.annotators.groups import GROUP_COLUMNS

        return t.select([c for c in t.column_names if c not in GROUP_COLUMNS and c != CHOSEN])
    t = t.rename_columns([stored_name(c, names[0]) for c in t.column_names])
    if url is None:
        return t
    with ann.open_parquet(url) as pf:
        there = set(pf.schema_arrow.names)
    return t.select([c for c in t.column_names if c in there])


def missing_group_error(path: str, group: str, held: dict) -> RecaptionError:
    """The one line for an annotation file without the caption group a mix takes its synthetic
    captions from."""
    from recaption.annotators.groups import in_file

    there = in_file(held)
    return RecaptionError(f"{path} has no caption group {group!r} (it holds "
                          f"{', '.join(map(repr, there)) if there else 'no named group'}); add it with "
                          f"`recaption annotate INPUT -o ANN --group {group}=CAPTIONER`")


def missing_metrics_error(path: str, group: str = "metrics") -> RecaptionError:
    """The one line for an annotation file without a column group the filter rules test."""
    from recaption.annotators import group_hint

    what = "filter metrics (language, caption length, image size)" if group == "metrics" else f"{group} columns"
    return RecaptionError(f"{path} has no {what}; add them with `{group_hint(group)}`")


def missing_scores_error(path: str, column: str, group: str) -> RecaptionError:
    """The one line for an annotation file without the score column a strategy cuts on."""
    from recaption.annotators import group_hint

    hint = group_hint(group)
    return RecaptionError(f"{path} has no {column} scores (the {group} group was not computed)"
                          + (f"; add them with `{hint}`" if hint else ""))


def scores_pair(meta: dict | None) -> bool:
    """Whether a file records that its `clip_captions` hold one score per candidate: recaption
    records the `clip` group only when it scored the file's current captions (new captions drop
    it), so there `len(clip_captions) == len(captions)` on every row."""
    return "clip" in ((meta or {}).get("groups") or {})


def _scores_pair(meta: dict | None, columns: list[str]) -> list[str]:
    # the candidate text is the costliest column by far; its counts are in clip_captions here
    return [c for c in columns if c != "captions"] if scores_pair(meta) and "clip_captions" in columns else columns


def from_table(t: pa.Table, filters=None, removed=None, scores=()) -> Columns:
    """Columns of one annotation table (read with `columns_for`), with the outcome of `filters`,
    the rows `removed` (`recaption.mixing.removal.Removed`) takes out of the pool, and the
    annotator score columns of `scores` (all missing where the file did not compute them)."""
    keyed = t["key"].is_valid().to_numpy(zero_copy_only=False)
    ok = pc.fill_null(pc.equal(t["status"], "ok"), False).to_numpy(zero_copy_only=False)
    has_raw = t["raw_caption"].is_valid().to_numpy(zero_copy_only=False)
    clip = score_column(t["clip_raw"])
    clip = np.where(has_raw, clip, np.nan).astype(clip.dtype, copy=False)
    c = Columns(keyed, ok, has_raw, clip, score_column(t["sieve"]))
    if "captions" in t.column_names:
        c.has_syn, c.syn_idx, c.clip_syn = synthetic(t["captions"], t["clip_captions"])
    elif "clip_captions" in t.column_names:  # read with counts_only from a file whose scores pair
        c.has_syn, c.syn_idx, c.clip_syn = synthetic(t["clip_captions"], t["clip_captions"])
    if "rerank_pick" in t.column_names and c.syn_idx is not None:
        _use_picks(c, t["rerank_pick"], t["captions"] if "captions" in t.column_names else t["clip_captions"],
                   t["clip_captions"])
    if CHOSEN in t.column_names:  # read for several synthetic groups: which gave each row's
        chosen = arrays.one(t[CHOSEN])
        c.groups = tuple(chosen.dictionary.to_pylist())
        c.syn_group = pc.fill_null(chosen.indices, -1).to_numpy(zero_copy_only=False).astype(np.int8)
    if filters:
        c.fcode = filters.codes(t)
    c.extra = {s: score_column(t[s]) if s in t.column_names else np.full(c.n, np.nan) for s in scores}
    if removed is not None and len(removed):
        c.removed = np.zeros(c.n, dtype=np.uint8)
        c.removed[removed.rows] = removed.code
    return c


def _use_picks(c: Columns, picks, captions, clip_captions) -> None:
    """A re-ranking chain's pick is the synthetic caption; its CLIP score stays the main model's."""
    pick = pc.fill_null(arrays.one(picks), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    n_caps = pc.fill_null(pc.list_value_length(_list(captions)), 0).to_numpy(zero_copy_only=False)
    valid = (pick >= 0) & (pick < n_caps)
    if not valid.any():
        return
    scores = _list(clip_captions)
    n_sc = pc.fill_null(pc.list_value_length(scores), 0).to_numpy(zero_copy_only=False)
    starts = np.zeros(len(n_sc), dtype=np.int64)
    np.cumsum(n_sc[:-1], out=starts[1:])
    vals = score_column(pc.list_flatten(scores))
    paired = valid & (n_sc == n_caps)
    at = np.where(paired, starts + np.where(paired, pick, 0), 0)
    picked = np.where(paired, vals[at] if len(vals) else np.nan, np.nan).astype(c.clip_syn.dtype, copy=False)
    c.syn_idx = np.where(valid, pick, c.syn_idx).astype(c.syn_idx.dtype)
    c.clip_syn = np.where(valid, picked, c.clip_syn).astype(c.clip_syn.dtype, copy=False)


def check_pairing(t: pa.Table, url: str, group=None) -> None:
    """A file that records its scores as paired with its candidates must hold them so (a dry run
    counted on it): one line naming the first row that does not. Read for several synthetic
    groups (`group`), each group whose scores the file records is checked on its own columns."""
    names = group_names(group)
    if len(names) > 1:
        held = (ann.metadata(t) or {}).get("groups") or {}
        for g in names:
            if f"clip.{g}" in held and stored_name("captions", g) in t.column_names:
                _check_pairs(t, url, stored_name("captions", g), stored_name("clip_captions", g))
        return
    if not scores_pair(ann.metadata(t)) or "captions" not in t.column_names:
        return
    _check_pairs(t, url, "captions", "clip_captions")


def _check_pairs(t: pa.Table, url: str, captions: str, scores: str) -> None:
    n_caps = pc.fill_null(pc.list_value_length(_list(t[captions])), 0).to_numpy(zero_copy_only=False)
    n_sc = pc.fill_null(pc.list_value_length(_list(t[scores])), 0).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((n_caps != n_sc) & pc.fill_null(pc.equal(t["status"], "ok"), False).to_numpy(
        zero_copy_only=False))
    if bad.size:
        i = int(bad[0])
        what = "" if captions == "captions" else f" in {captions}"
        raise RecaptionError(f"{url}: sample {t['key'][i].as_py()!r} has {n_caps[i]} candidates{what} but "
                             f"{n_sc[i]} CLIP scores, though the file records its scores as computed on "
                             "its captions; re-run `recaption score` on it")


def _list(col) -> pa.ListArray:
    a = arrays.one(col)
    return a.cast(pa.list_(a.type.value_type)) if pa.types.is_large_list(a.type) else a


def synthetic(captions, clip_captions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: has a candidate; the candidate written as synthetic caption; its CLIP score.

    The candidate with the highest scored CLIP value, first on ties; the first candidate
    (with no score) when none has one, or when the scores do not pair one to one with candidates.
    """
    caps, scores = _list(captions), _list(clip_captions)
    n_caps = pc.fill_null(pc.list_value_length(caps), 0).to_numpy(zero_copy_only=False)
    n_sc = pc.fill_null(pc.list_value_length(scores), 0).to_numpy(zero_copy_only=False)
    n = len(n_caps)
    has = n_caps > 0
    idx = np.where(has, 0, -1).astype(np.int16 if n_caps.max(initial=0) < 2**15 else np.int32)
    vals = score_column(pc.list_flatten(scores))  # the file's float type: comparisons stay exact
    best = np.full(n, np.nan, dtype=vals.dtype)
    paired = has & (n_sc == n_caps)
    rows = np.flatnonzero(paired)
    if rows.size:
        if rows.size != np.count_nonzero(n_sc):  # drop scores of rows whose lengths do not pair
            vals = vals[np.repeat(paired, n_sc)]
        lens = n_sc[rows]  # every one > 0: reduceat needs non-empty segments
        seg = np.zeros(len(rows), dtype=np.int64)
        np.cumsum(lens[:-1], out=seg[1:])
        row_max = np.maximum.reduceat(np.where(np.isnan(vals), -np.inf, vals), seg)
        found = np.isfinite(row_max)
        best[rows[found]] = row_max[found]
        is_best = vals == np.repeat(row_max, lens)  # NaN never equals
        # first best per row: the smallest global index among its best, less where the row starts
        first = np.minimum.reduceat(np.where(is_best, np.arange(len(vals)), len(vals)), seg) - seg
        idx[rows[found]] = first[found]
    return has, idx, best


def synthetic_text(captions, syn_idx: np.ndarray) -> pa.Array:
    """The synthetic caption of every row as a string array (null where there is none)."""
    caps = _list(captions)
    n_caps = pc.fill_null(pc.list_value_length(caps), 0).to_numpy(zero_copy_only=False)
    starts = np.zeros(len(n_caps), dtype=np.int64)
    np.cumsum(n_caps[:-1], out=starts[1:])
    idx = pa.array(starts + np.maximum(syn_idx, 0), mask=syn_idx < 0)
    return pc.list_flatten(caps).take(idx)
