"""The published filters as data: rules over the filter metrics of annotation files, applied to
the alt-text and the image before any mixing strategy (docs/formats.md#filters).

A rule is `NAME` or `NAME=VALUE`; a preset (`basic`, `laion-5b`) stands for several rules. Each
row gets, columnar and per file, the code of the first rule it fails (`2*i`) or lacks the input
of (`2*i + 1`), or -1 when it passes every rule. Reasons with the row's own value are built only
where a mix writes its decisions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaption.errors import RecaptionError, unknown
from recaption.mixing.rules import PRESETS, kinds as rule_kinds
from recaption.io import arrays
from recaption.annotators.metrics import aspect, sides  # noqa: F401  (the size rules' measures, for the report)


def kinds() -> dict:
    """Every rule kind the registered annotators offer, by name (`recaption.annotators.base.RuleKind`)."""
    return rule_kinds()


def kind(name: str):
    """The rule kind `name` (an unknown one: one line with the nearest rules and presets)."""
    known = kinds()
    if name not in known:
        raise unknown("filter", name, [*known, *PRESETS])
    return known[name]


# -- parsing -----------------------------------------------------------------------------------
def normalize(spec) -> dict:
    """Rules as an ordered {name: value} from what a user gives: None, `NAME[=VALUE]` strings (a
    list, or one string), or a mapping (YAML). A preset expands in place; a later value of a rule
    replaces an earlier one; a value of false removes the rule."""
    out: dict = {}
    if spec is None or spec == "" or spec is False:
        return out
    items = spec.items() if isinstance(spec, dict) else [_split(x) for x in ([spec] if isinstance(spec, str) else spec)]
    for name, value in items:
        name = str(name).strip()
        if name in PRESETS:
            if value is False:
                for k in PRESETS[name]:
                    out.pop(k, None)
            elif value not in (None, True):
                raise RecaptionError(f"filter preset {name} takes no value, got {value!r}")
            else:
                out.update(PRESETS[name])
            continue
        kind(name)
        if value is False:
            out.pop(name, None)
            continue
        out[name] = _value(name, value)
    return out


def _split(item) -> tuple[str, object]:
    if isinstance(item, dict) and len(item) == 1:
        return next(iter(item.items()))
    if not isinstance(item, str):
        raise RecaptionError(f"a filter is NAME or NAME=VALUE, got {item!r}")
    name, eq, value = item.partition("=")
    return name, (value.strip() if eq else None)


def _value(name: str, value):
    kind = kinds()[name]
    if kind.value is None:
        if value not in (None, True, "", "true"):
            raise RecaptionError(f"filter {name} takes no value, got {value!r}")
        return None
    if value is None or value is True or value == "":
        raise RecaptionError(f"filter {name} needs a value: {name}=VALUE ({kind.help})")
    if kind.value is str:
        codes = value if isinstance(value, (list, tuple)) else str(value).split(",")
        codes = [str(c).strip() for c in codes if str(c).strip()]
        if not codes:
            raise RecaptionError(f"filter {name} needs language codes, e.g. {name}=en,de")
        return ",".join(codes)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RecaptionError(f"filter {name} needs a number, got {value!r}") from None
    if not math.isfinite(v):
        raise RecaptionError(f"filter {name} needs a finite number, got {value!r}")
    if kind.value is int:
        if v != int(v) or v < 0:
            raise RecaptionError(f"filter {name} needs a whole number >= 0, got {value!r}")
        return int(v)
    if name == "max-aspect" and v < 1:
        raise RecaptionError(f"filter max-aspect needs a ratio >= 1, got {value!r}")
    return v


def label(name: str, value) -> str:
    """`min-side=200`, `english`: a rule as it is written."""
    return name if value is None else f"{name}={_fmt(value)}"


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# -- evaluating --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """One rule with its value: what it tests on a table, and the reason a row fails it with. The
    rule carries its kind, looked up where the rules are parsed, so the processes and Ray tasks
    that evaluate it need no registry of their own (an annotator registered at run time)."""
    name: str
    value: object
    kind_of: object = None  # the RuleKind (default: looked up by name)

    @property
    def kind(self):
        """What the rule's name tests (`recaption.annotators.base.RuleKind`)."""
        return self.kind_of if self.kind_of is not None else kind(self.name)

    @property
    def label(self) -> str:
        """The rule as written: `min-side=200`."""
        return label(self.name, self.value)

    def test(self, t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(fails, lacks) per row: the row's value fails the rule; the row lacks what it tests."""
        fails, lacks, _ = self._evaluate(t)
        return fails, lacks

    def _evaluate(self, t: pa.Table):
        v, k = self.value, self.kind
        if k.op == "in":
            col = t[k.column]
            codes = [k.fixed] if k.fixed is not None else v.split(",")
            ok = arrays.bools(pc.is_in(col, value_set=pa.array(codes, pa.string())))
            has = arrays.valid(col)
            return has & ~ok, ~has, None
        if k.op in ("min", "max"):
            x, has = arrays.numbers(t[k.column])
            with np.errstate(invalid="ignore"):
                return has & ((x < v) if k.op == "min" else (x > v)), ~has, None
        # custom: the test its kind declares (RuleKind refuses a custom rule without one)
        try:
            fails, lacks, measured = k.tester()(t, v)
        except KeyError as e:
            raise RecaptionError(f"filter {self.name}: its test reads column {e}, which the rule does not "
                                 f"declare in `needs` ({', '.join(k.needs)})") from None
        n = t.num_rows
        fails, lacks = np.asarray(fails, bool), np.asarray(lacks, bool)
        if fails.shape != (n,) or lacks.shape != (n,):
            raise RecaptionError(f"filter {self.name}: its test gave {fails.shape} and {lacks.shape} values "
                                 f"for {n} rows")
        return fails, lacks, measured

    def measured(self, t: pa.Table) -> pa.Array:
        """The row's value as text, for drop reasons."""
        k = self.kind
        if k.op == "in":
            return pc.fill_null(t[k.column], "none")
        col = t[k.column] if k.op in ("min", "max") else self._evaluate(t)[2]
        if isinstance(col, np.ndarray):
            col = pa.array(col)
        if pa.types.is_floating(col.type):
            return pc.cast(pa.array(np.round(arrays.numbers(col)[0], 4)), pa.string())
        return pc.cast(col, pa.string())

    @property
    def fail_prefix(self) -> str:
        """How the reason of a row failing the rule starts, before the row's value."""
        return f"filter: {self.label}: {self.kind.column} " if self.kind.op == "in" else f"filter: {self.name} "

    @property
    def lacks_text(self) -> str:
        """The reason (and summary category) of a row lacking what the rule tests."""
        return f"filter: {self.name}: {self.kind.lacks}"

    def fail_text(self, t: pa.Table) -> pa.Array:
        """`filter: min-side 120 < 200` per row (the row's value, then the rule's limit)."""
        m, k = self.measured(t), self.kind
        if k.op == "in":
            return pc.binary_join_element_wise(self.fail_prefix, m, "")
        op = {"min": "<", "max": ">"}.get(k.op, k.sign)
        return pc.binary_join_element_wise(self.fail_prefix, m, f" {op} {_fmt(self.value)}", "")


@dataclass
class FilterSet:
    """The rules of one mix, in order: the first a row fails is its reason."""
    rules: list[Rule] = field(default_factory=list)

    @classmethod
    def of(cls, spec) -> "FilterSet":
        """The rules of a spec in any form `normalize` takes."""
        return cls([Rule(k, v, kind(k)) for k, v in normalize(spec).items()])

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def columns(self) -> list[str]:
        """The annotation columns the rules read (beyond the fixed ones a mix reads anyway)."""
        from recaption.annotators import fixed_names

        fixed = set(fixed_names())
        return list(dict.fromkeys(c for r in self.rules for c in r.kind.needs if c not in fixed))

    @property
    def groups(self) -> list[str]:
        """The column groups a file must hold for the rules to apply (beyond the fixed columns)."""
        return list(dict.fromkeys(r.kind.group for r in self.rules if r.kind.group))

    @property
    def needs_metrics(self) -> bool:
        """Whether a rule reads a column group computed at annotate time (not only the fixed columns)."""
        return bool(self.groups)

    @property
    def spec(self) -> dict:
        """The rules as {name: value}, in order."""
        return {r.name: r.value for r in self.rules}

    @property
    def n_codes(self) -> int:
        """How many filter codes there are: a failed and a lacking one per rule."""
        return 2 * len(self.rules)

    def codes(self, t: pa.Table) -> np.ndarray:
        """Per row: -1 passed; 2*i failed rule i; 2*i+1 lacks what rule i tests (first rule wins)."""
        code = np.full(t.num_rows, -1, dtype=np.int16)
        for i, r in enumerate(self.rules):
            fails, lacks = r.test(t)
            free = code < 0
            code[free & lacks] = 2 * i + 1
            code[free & fails] = 2 * i
        return code

    def alone(self, t: pa.Table, rows: np.ndarray) -> list[int]:
        """Per rule, how many of `rows` it would drop on its own (fails or lacks), in any order."""
        out = []
        for r in self.rules:
            fails, lacks = r.test(t)
            out.append(int(np.count_nonzero((fails | lacks) & rows)))
        return out

    def category(self, code: int) -> str:
        """The summary's reason for a code: the rule's name, numbers left out (they are in `filters`)."""
        r = self.rules[code // 2]
        return r.lacks_text if code % 2 else f"filter: {r.name}"

    def category_of(self, reason: str) -> str | None:
        """The summary category of a drop reason these rules wrote (`reasons`); None for any other."""
        for i, r in enumerate(self.rules):
            if reason == r.lacks_text:
                return self.category(2 * i + 1)
        # the longest prefix: a rule's label may begin another's
        hits = [(len(r.fail_prefix), i) for i, r in enumerate(self.rules) if reason.startswith(r.fail_prefix)]
        return self.category(2 * max(hits)[1]) if hits else None

    def reasons(self, t: pa.Table, code: np.ndarray) -> pa.Array:
        """Per row: the drop reason of a filtered row (`filter: min-side 120 < 200`), else null."""
        out = pa.nulls(t.num_rows, pa.string())
        for i, r in enumerate(self.rules):
            if np.any(code == 2 * i):
                out = pc.if_else(pa.array(code == 2 * i), r.fail_text(t), out)
            if np.any(code == 2 * i + 1):
                out = pc.if_else(pa.array(code == 2 * i + 1), pa.scalar(r.lacks_text), out)
        return out

