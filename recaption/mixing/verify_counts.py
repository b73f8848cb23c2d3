"""The counts of a mix summary against its decisions files (`recaption verify`): rows read,
written, kept raw and synthetic, dropped and errors, and `dropped_by_reason` category by category.

Each drop reason is put in its category exactly as the mix made it, from the same sources: a
strategy's reason from the strategy table (`strategies.base.REASONS`, `CATEGORIES`, formatted
with the file's threshold), a filter rule's from the file's rules (`filters.FilterSet`), a
duplicate's or an overlap's from the rule it names (`removal.category_of`), and any other (an
error row's, a sample without annotation row) by `errors.reason_category`, as the pool pass
counts them. No category is matched by a prefix of another, and none is checked only in a total.
"""
from __future__ import annotations

import json
from collections import Counter

from recaption.errors import RecaptionError, reason_category
from recaption.io import annotations as ann
from recaption.io.atomic import exists
from recaption.mixing import removal
from recaption.mixing.columns import CHOSEN
from recaption.mixing.filters import FilterSet
from recaption.mixing.strategies.base import CATEGORIES, REASONS, reason_text

SUMMARY = "_summary.json"


class Categories:
    """Drop reason -> summary category for the decisions files of one threshold and set of rules."""

    def __init__(self, threshold, filters):
        self.strategy = {reason_text(code, threshold): CATEGORIES[code] for code in REASONS}
        self.problem = None  # why the rules could not be read: their reasons then fall in no rule's category
        try:
            self.filters = FilterSet.of(filters or {})
        except RecaptionError as e:  # a filter rule not registered here, say (a plugin's)
            self.filters, self.problem = FilterSet(), str(e)

    def of(self, reason: str) -> str:
        """The category the mix counted `reason` under."""
        if reason in self.strategy:
            return self.strategy[reason]
        return self.filters.category_of(reason) or reason_category(reason)


class Tally:
    """The summary's counts, as the decisions files (and their annotation files) hold them."""

    def __init__(self, by_reason):
        self.n = Counter()
        self.by_reason = by_reason if isinstance(by_reason, dict) else None
        self.got = Counter()  # drops per category, as the decisions' reasons fall in them
        self.errors_known = True
        self.last_kept = 0
        self._categories: dict[str, Categories] = {}
        self.groups: dict[str, Counter] = {}  # several synthetic groups: group -> read, written, synthetic

    def add(self, t, meta: dict, path: str) -> list[str]:
        """Count one decisions table (`path`'s); what keeps its reasons from being put in categories."""
        import pyarrow.compute as pc

        keyed = t["key"].is_valid()
        kept = pc.fill_null(t["kept"], False)
        self.last_kept = pc.sum(kept).as_py() or 0
        source = t["caption_source"]
        self.n["read"] += pc.sum(keyed).as_py() or 0
        self.n["written"] += self.last_kept
        self.n["raw"] += pc.sum(pc.and_(kept, pc.fill_null(pc.equal(source, "raw"), False))).as_py() or 0
        self.n["synthetic"] += pc.sum(pc.and_(kept, pc.fill_null(pc.equal(source, "synthetic"), False))).as_py() or 0
        self.n["dropped"] += t.num_rows - self.last_kept
        if CHOSEN in t.column_names:  # several synthetic groups: which gave each row's synthetic caption
            self._groups(t[CHOSEN], keyed, kept, source)
        cats = self._of(meta)
        problems = [f"{path}: its filter rules' drops cannot be put in categories ({cats.problem})"] \
            if cats.problem else []
        reasons = pc.fill_null(t.filter(pc.invert(kept))["reason"].combine_chunks(), "")
        removed = removal.categories_of(reasons)  # one distinct reason a row: put in categories column-wise
        for r in pc.value_counts(removed.drop_null()).to_pylist():
            self.got[r["values"]] += r["counts"]
        # the other distinct reasons (few, bar those carrying values), each put in its category once
        for r in pc.value_counts(reasons.filter(removed.is_null())).to_pylist():
            self.got[cats.of(r["values"])] += r["counts"]
        a = meta.get("annotations")
        s = ann.read_table(a, columns=["key", "status"]) if a and exists(a) else None
        if s is not None and "status" in s.column_names:  # error rows: keyed annotation rows not ok
            bad = pc.and_(s["key"].is_valid(), pc.invert(pc.fill_null(pc.equal(s["status"], "ok"), False)))
            self.n["errors"] += pc.sum(bad).as_py() or 0
        else:
            self.errors_known = False
        return problems

    def _groups(self, chosen, keyed, kept, source) -> None:
        """Count the rows by the synthetic group that gave their synthetic caption."""
        import pyarrow.compute as pc

        syn = pc.and_(kept, pc.fill_null(pc.equal(source, "synthetic"), False))
        for what, mask in (("read", keyed), ("written", kept), ("synthetic", syn)):
            for r in pc.value_counts(chosen.filter(mask).drop_null()).to_pylist():
                self.groups.setdefault(r["values"], Counter())[what] += r["counts"]

    def _of(self, meta: dict) -> Categories:
        key = json.dumps([meta.get("threshold"), meta.get("filters")], sort_keys=True, default=str)
        if key not in self._categories:
            self._categories[key] = Categories(meta.get("threshold"), meta.get("filters"))
        return self._categories[key]

    def check(self, summary: dict, overlay: bool) -> list[str]:
        """The summary's counts that disagree with the files'."""
        out = []
        counts = summary.get("counts")
        if not isinstance(counts, dict):
            return [f"{SUMMARY} records no counts"]
        for k in ("read", "written", "raw", "synthetic", "dropped", "errors"):
            if k == "errors" and not self.errors_known:
                continue
            if counts.get(k) != self.n[k]:
                out.append(f"{SUMMARY} counts {counts.get(k)} {k}, the files hold {self.n[k]}")
        out += self._by_reason()
        given = counts.get("synthetic_groups")
        if given is not None or self.groups:
            given = given if isinstance(given, dict) else {}
            for g in dict.fromkeys([*given, *self.groups]):
                mine = dict(self.groups.get(g, Counter()))
                theirs = given.get(g) if isinstance(given.get(g), dict) else {}
                for k in ("read", "written", "synthetic"):
                    if theirs.get(k, 0) != mine.get(k, 0):
                        out.append(f"{SUMMARY} counts {theirs.get(k, 0)} {k} from synthetic group {g!r}, "
                                   f"the decisions {mine.get(k, 0)}")
        if overlay and counts.get("output_shards") is not None:
            out.append(f"{SUMMARY} counts {counts['output_shards']} output shards, an overlay has none")
        return out

    def _by_reason(self) -> list[str]:
        """`dropped_by_reason` against the decisions' reasons, every category on its own."""
        by = self.by_reason
        if by is None:
            return [f"{SUMMARY} records no dropped_by_reason"]
        out = []
        if sum(by.values()) != self.n["dropped"]:
            out.append(f"{SUMMARY}'s dropped_by_reason adds up to {sum(by.values())}, "
                       f"the decisions drop {self.n['dropped']}")
        for c in dict.fromkeys([*by, *sorted(self.got)]):
            if by.get(c, 0) != self.got[c]:
                out.append(f"{SUMMARY} counts {by.get(c, 0)} dropped for {c!r}, the decisions {self.got[c]}")
        return out
