"""Named caption groups: several captioners in one annotation folder (docs/formats.md#caption-groups).

The unnamed group is the `captions`, `clip` and `sieve` annotators as they always were. A named
group G is the same three annotators under the names `captions.G`, `clip.G` and `sieve.G`, each
recorded with its own settings (so each resumes, is refused or is redone on its own), writing the
same columns with `__G` after their names: `captions__G`, `captioner__G`, `clip_captions__G`,
`sieve__G`, `sieve_mean__G`, `sieve_best__G`. `clip_raw` is the unnamed `clip` group's alone: a
named group scores its candidates with the pass's CLIP model and the image embedding it already
made. New captions of a group make only that group's scores stale, so a group added to a finished
folder leaves every other group's columns, and the mixes made from them, as they were.

A group whose captioner is a text model (the `text` and `vllm-text` backends) is a chained group:
its template reads `{alt_text}` and `{caption:GROUP}` (the best candidate of another group, computed
earlier in the pass or already in the file), so it runs after the groups it reads, on the whole
shard once their scores are in (`finish_shard`), and reads no pixels. Its `where` rule (fusion only
where it pays) sends only the rows a clause of the rule selects; `fusion__G` says, per row, which
clause sent it or why it was not sent. Its settings record a digest of the settings of every group
it reads, so it is stale when one of them changes.

A named group's classes are made here when first asked for (`annotators.get("captions.long")`),
never registered: the registry's tables (schema, options, recipe sections) stay those of the
unnamed groups, and a file's own named groups are added to its schema where it holds them.
Workers import them as "recaption.annotators.groups:Captions__long" (this module's `__getattr__`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from recaption.errors import RecaptionError

SEP = "__"  # column suffix: captions__long
NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")  # no '_' and no '.': column and group names stay unambiguous
FAMILIES = ("captions", "clip", "sieve", "length")  # the annotators a named group is made of, in run order
PARENTS = {"captions": "recaption.annotators.captions:Captions", "clip": "recaption.annotators.clip:Clip",
           "sieve": "recaption.annotators.sieve:Sieve",
           "length": "recaption.annotators.length:Length"}  # the built-in ones (annotators.BUILTIN)
_MADE: dict[str, type] = {}


def check_name(group: str) -> str:
    """A group name: lower-case letters, digits and '-', starting with a letter (one line otherwise)."""
    if not isinstance(group, str) or not NAME.fullmatch(group):
        raise RecaptionError(f"caption group name {group!r}: use lower-case letters, digits and '-', starting "
                             "with a letter (at most 32)")
    return group


def split(name: str) -> tuple[str, str | None]:
    """`captions.long` -> ("captions", "long"); an unnamed group's name -> (name, None)."""
    base, dot, group = name.partition(".")
    return (base, group) if dot and base in FAMILIES else (name, None)


def is_named(name: str) -> bool:
    """Whether an annotator name is a named group's (`captions.long`, `clip.long`, `sieve.long`)."""
    return split(name)[1] is not None


def column(name: str, group: str | None) -> str:
    """A caption column of a group: the unnamed group's name itself, else `NAME__GROUP`."""
    return name if group is None else f"{name}{SEP}{group}"


GROUP_COLUMNS = ("captions", "captioner", "clip_captions", "sieve", "sieve_mean", "sieve_best", "fusion",
                 "clip_captions_tokens", "clip_captions_sent_min", "clip_captions_sent_mean", "captions_clean")
_TEXT: set[str] = set()  # the groups known here to be chained (a text model's): from configs, targets, settings
_READS: dict[str, tuple[str, ...]] = {}  # chained group -> the annotators it reads (`captions.short`, `clip`...)


def column_group(col: str) -> str | None:
    """The named group a column belongs to (None: not a named group's column)."""
    base, sep, group = col.rpartition(SEP)
    return group if sep and base in GROUP_COLUMNS and NAME.fullmatch(group) else None


def named(name: str) -> type:
    """The class of a named group's annotator (`clip.long`), made once per process."""
    base, group = split(name)
    if group is None:
        raise RecaptionError(f"internal: {name!r} is not a named caption group")
    check_name(group)
    key = f"{name}/text" if group in _TEXT and base in ("captions", "clip", "length") else name
    if key not in _MADE:
        _MADE[key] = _make(base, group, key != name)
    return _MADE[key]


def _make(base: str, group: str, text: bool = False) -> type:
    from recaption.annotators.base import Column
    from recaption.registry import load

    parent = load(PARENTS[base], "annotator")
    mixin = {"captions": _NamedCaptions, "clip": _NamedClip, "sieve": _NamedRows, "length": _NamedRows}[base]
    unnamed = {"clip_raw", *getattr(parent, "unnamed_only", ())}  # the alt-text's scores are the unnamed group's
    own = [c for c in parent.columns if c.name not in unnamed]
    extra = {}
    if text:
        mixin = {"captions": _TextCaptions, "clip": _TextClip, "length": _TextLength}[base]
        extra = {"reads_images": base != "captions"}
        if base == "captions":
            own.append(Column("fusion", "string"))
    cls = type(f"{'Text' if text else ''}{parent.__name__}{SEP}{group}", (mixin, parent), {
        "__module__": __name__, "__doc__": f"The {base} annotator of caption group {group!r}.",
        "name": f"{base}.{group}", "group": group,
        "columns": tuple(Column(column(c.name, group), c.type, c.blank) for c in own),
        "after": tuple(f"{a}.{group}" for a in parent.after if a in FAMILIES),
        "timer": f"{parent.timer}.{group}" if parent.timer else parent.timer,
        "options": (), "rules": (), "hists": (), "recipe_keys": (), "always": False,
        "renames": {c: column(c, group) for c in GROUP_COLUMNS},
        "add_hint": f"recaption annotate INPUT -o ANN --group {group}=CAPTIONER",
    } | extra)
    cls.__qualname__ = cls.__name__
    return cls


def __getattr__(attr: str):
    """`Captions__long` (a worker's target) -> the class of `captions.long` (`TextCaptions__fused`:
    of a chained group's)."""
    head, sep, group = attr.partition(SEP)
    by_class = {"Captions": "captions", "Clip": "clip", "Sieve": "sieve", "Length": "length"}
    text = head.startswith("Text") and head[4:] in by_class
    head = head[4:] if text else head
    if sep and head in by_class and NAME.fullmatch(group):
        if text:
            _TEXT.add(group)
        return named(f"{by_class[head]}.{group}")
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


# -- in a worker: the unnamed annotators' code on renamed columns ------------------------------
class Renamed:
    """A row as a named group's annotator sees it: its own columns under the unnamed names."""

    __slots__ = ("row", "names")

    def __init__(self, row: dict, names: dict):
        self.row, self.names = row, names

    def __getitem__(self, k):
        if k in self.names:  # a group column not filled yet reads as not computed
            return self.row.get(self.names[k])
        return self.row[k]

    def __setitem__(self, k, v):
        self.row[self.names.get(k, k)] = v

    def get(self, k, default=None):
        """`dict.get` on the renamed column."""
        return self.row.get(self.names.get(k, k), default)

    def update(self, **values) -> None:
        """`dict.update` on the renamed columns."""
        for k, v in values.items():
            self[k] = v


class _Batch:
    """A batch whose rows are renamed (everything else is the batch's own)."""

    def __init__(self, batch, names: dict):
        self._batch = batch
        self.rows = [Renamed(r, names) for r in batch.rows]

    def __getattr__(self, attr):
        return getattr(self._batch, attr)


class _NamedRows:
    """Runs the unnamed annotator's code on the group's columns."""

    renames: dict = {}
    group: str = ""

    def annotate_batch(self, batch) -> None:
        """The unnamed annotator's batch work, on this group's columns."""
        super().annotate_batch(_Batch(batch, self.renames))

    def finish_shard(self, rows: list[dict]) -> None:
        """The unnamed annotator's shard work, on this group's columns."""
        super().finish_shard([Renamed(r, self.renames) for r in rows])


class _NamedCaptions(_NamedRows):
    """A group's captioner: a name of its own in the worker's batches, so two groups that use the
    same model still each get their inputs."""


class _NamedClip(_NamedRows):
    """Scores the group's candidates only: `clip_raw` and the embedding files are the unnamed
    `clip` group's."""

    @classmethod
    def settings(cls, c, run) -> dict:
        """The CLIP model's settings (never `embeddings`: this group keeps none)."""
        s = super().settings(c, run)
        s.pop("embeddings", None)
        return s

    @classmethod
    def files(cls, settings: dict, ann_dir: str, name: str) -> list[str]:
        """None: the embedding files are the unnamed group's."""
        return []

    def annotate_batch(self, batch) -> None:
        """The CLIP score of every candidate of the group (the image embedding shared per batch)."""
        from recaption.annotators.clip import embed

        idx = batch.live()
        if not idx:
            return
        rows = [batch.rows[i] for i in idx]
        cands = [r[self.renames["captions"]] or [] for r in rows]
        if not any(cands):
            return
        emb = embed(self.scorer, batch, idx)
        _, scores = self.scorer.score(emb, [None] * len(rows), cands)
        for r, s in zip(rows, scores):
            r[self.renames["clip_captions"]] = s

    def finish_shard(self, rows: list[dict]) -> None:
        """Nothing: the unnamed group writes (or removes) the embedding files."""


class _TextCaptions(_NamedRows):
    """A chained group's captioner: a text model, run on the whole shard once the groups it reads
    are scored, on the rows its `where` rule selects (every row with what it reads, without one)."""

    def __init__(self, config, ctx):
        from recaption.annotators.base import Annotator, on_device
        from recaption.captioners import build_captioner

        Annotator.__init__(self, config, ctx)
        self.captioner = build_captioner(on_device(config.caption, ctx.device))
        self.id = self.captioner.id
        self.rule = Rule.parse(config.where) if config.where else None
        self.refs = config.refs()

    @classmethod
    def settings(cls, c, run) -> dict:
        """The captioner's settings, the rule, and (filled on the driver, `resolve_reads`) a digest
        of the settings of every group it reads."""
        from recaption.annotators.captions import Captions

        return Captions.settings(c.caption, run) | {"where": c.where, "reads": {}}

    @classmethod
    def check(cls, c) -> None:
        """The text backend's packages, before any work."""
        from recaption.captioners.base import backend_requirements
        from recaption.errors import require

        for module, extra in backend_requirements(c.caption):
            require(module, extra)

    def image_models(self) -> dict:
        """None: a text model reads no pixels."""
        return {}

    def annotate_batch(self, batch) -> None:
        """Nothing per batch: the groups it reads are scored by the end of the shard."""

    def finish_shard(self, rows: list[dict]) -> None:
        """Send each selected row's alt-text and the best candidates it reads to the text model."""
        cap, why, who = (self.renames[k] for k in ("captions", "fusion", "captioner"))
        live = [r for r in rows if r["key"] is not None and r["status"] == "ok"]
        for r in live:
            r[who] = self.id
        sent, why_rows = select(live, self.refs, self.rule)
        for r, w in zip(live, why_rows):
            r[why] = w
        todo = [live[i] for i in sent]
        size = max(1, self.config.caption.batch_size)
        for at in range(0, len(todo), size):
            part = todo[at:at + size]
            contexts = [context(r, self.refs) for r in part]
            for r, c in zip(part, self._isolating(part, contexts)):
                if c is not None:
                    r[cap] = c

    def _isolating(self, rows, contexts):
        import logging

        try:
            return self.captioner.caption([None] * len(rows), contexts, f"{rows[0]['shard']}/{rows[0]['key']}")
        except Exception as e:  # a bad sample never stops its shard: retried one by one, it errors alone
            if len(rows) == 1:
                rows[0].update(status="error", error=f"caption.{self.group}: {type(e).__name__}: {e}")
                return [None]
            logging.getLogger("recaption").warning("group %s: a batch failed (%s); retrying sample by sample",
                                                   self.group, e)
            return [self._isolating([r], [c])[0] for r, c in zip(rows, contexts)]


class _KeptEmbeddings:
    """For a chained group's scores: its captions are written at the end of the shard, so the image
    embedding of each live row is kept from the pass's batches (the pass's own, shared through the
    batch memo) until then."""

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._emb: dict[int, object] = {}

    def annotate_batch(self, batch) -> None:
        """Keep the image embeddings of the batch's live rows (no caption of the group exists yet)."""
        from recaption.annotators.clip import embed

        idx = batch.live()
        if idx:
            emb = embed(self.scorer, batch, idx).detach().cpu()
            for k, i in enumerate(idx):
                self._emb[id(batch.rows[i])] = emb[k]


class _TextClip(_KeptEmbeddings, _NamedClip):
    """A chained group's CLIP scores: its candidates scored once they are written."""

    def finish_shard(self, rows: list[dict]) -> None:
        """The CLIP score of every candidate the chained group wrote."""
        import torch

        cap, out = self.renames["captions"], self.renames["clip_captions"]
        have = [r for r in rows if r.get(cap) and id(r) in self._emb]
        for at in range(0, len(have), 256):
            part = have[at:at + 256]
            emb = torch.stack([self._emb[id(r)] for r in part]).to(self.scorer.device)
            _, scores = self.scorer.score(emb, [None] * len(part), [r[cap] for r in part])
            for r, sc in zip(part, scores):
                r[out] = sc
        self._emb.clear()


class _TextLength(_KeptEmbeddings, _NamedRows):
    """A chained group's token counts and sentence scores, measured once its captions are written."""

    def finish_shard(self, rows: list[dict]) -> None:
        """The token counts and sentence scores of every caption the chained group wrote."""
        import torch

        live = [r for r in rows if id(r) in self._emb]
        if live:
            self.measure([Renamed(r, self.renames) for r in live],
                         lambda: torch.stack([self._emb[id(r)] for r in live]).to(self.scorer.device))
        self._emb.clear()


# -- chained groups: what a row reads, the rule, the order ---------------------------------------
def best(row: dict, group: str | None) -> str | None:
    """A group's best candidate in a row: the highest scored CLIP value, first on ties; the first
    candidate where none is scored or the scores do not pair with the candidates."""
    import math

    cands = row.get(column("captions", group)) or []
    if not cands:
        return None
    scores = row.get(column("clip_captions", group)) or []
    ok = len(scores) == len(cands) and any(s is not None and math.isfinite(s) for s in scores)
    if not ok:
        return cands[0]
    vals = [s if s is not None and math.isfinite(s) else -math.inf for s in scores]
    return cands[vals.index(max(vals))]


def context(row: dict, refs) -> "object":
    """A row's `chat.Context`: its alt-text and the best candidate of each group it reads."""
    from recaption.captioners.chat import Context

    return Context(row.get("raw_caption"), {g: best(row, g) for g in refs})


@dataclass(frozen=True)
class Rule:
    """`where`: clauses joined by `|` (or ` or `), each a conjunction of `COLUMN OP NUMBER` joined by
    `&` (or ` and `), OP one of < <= > >=; a row is sent when a clause holds, and counted under the
    first that does. A missing value (null, NaN) holds no comparison."""

    text: str
    clauses: tuple  # of tuples of (column, op, value)

    @classmethod
    def parse(cls, text: str) -> "Rule":
        """The rule, or one line saying what is wrong with it."""
        import re

        clauses = []
        for part in re.split(r"\|| or ", str(text)):
            conds = []
            for cond in re.split(r"&| and ", part):
                m = re.fullmatch(r"\s*([a-z][a-z0-9_-]*)\s*(<=|>=|<|>)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*", cond)
                if not m:
                    raise RecaptionError(f"where {text!r}: {cond.strip()!r} is not COLUMN OP NUMBER (OP: < <= > >=; "
                                         "clauses joined by | and conditions by &)")
                conds.append((m.group(1), m.group(2), float(m.group(3))))
            clauses.append(tuple(conds))
        return cls(str(text), tuple(clauses))

    def columns(self) -> list[str]:
        """The columns the rule reads, in order."""
        return list(dict.fromkeys(c for cl in self.clauses for c, _, _ in cl))

    def label(self, i: int) -> str:
        """Clause i as the summary and `fusion__G` name it."""
        return f"clause {i + 1}: " + " & ".join(f"{c}{op}{v:g}" for c, op, v in self.clauses[i])

    def first(self, rows: list[dict]):
        """(index of the first clause each row meets, -1 for none; the first column each row lacks
        or None), column-wise."""
        import numpy as np

        n = len(rows)
        vals = {c: np.array([_num(r.get(c)) for r in rows], dtype=np.float64) for c in self.columns()}
        hit = np.full(n, -1, dtype=np.int64)
        for i in range(len(self.clauses) - 1, -1, -1):
            ok = np.ones(n, dtype=bool)
            for c, op, v in self.clauses[i]:
                ok &= getattr(np, {"<": "less", "<=": "less_equal", ">": "greater", ">=": "greater_equal"}[op])(
                    vals[c], v)  # NaN compares false: a missing value holds nothing
            hit[ok] = i
        cols = self.columns()
        nan = np.stack([np.isnan(vals[c]) for c in cols], axis=1) if n else np.zeros((0, len(cols)), bool)
        first = nan.argmax(axis=1)  # the first column a row lacks, where it lacks one
        lack = [cols[j] if m else None for j, m in zip(first.tolist(), nan.any(axis=1).tolist())]
        return hit, lack


def _num(v) -> float:
    try:
        return float("nan") if v is None else float(v)
    except (TypeError, ValueError):
        return float("nan")


def select(rows: list[dict], refs, rule: "Rule | None"):
    """Which rows a chained group sends to its model (indexes), and each row's `fusion` value:
    `all` (no rule), the clause that sent it, or why it was not sent."""
    why: list[str] = []
    missing = [next((g for g in refs if best(r, g) is None), False) for r in rows]
    if rule is None:
        hit, lack = [0] * len(rows), [None] * len(rows)
    else:
        hit, lack = rule.first(rows)
    sent = []
    for k, (m, h, lk) in enumerate(zip(missing, hit, lack)):
        if m is not False:
            why.append(f"not sent: no caption in group {m or 'captions'}")
        elif rule is None:
            why.append("all")
            sent.append(k)
        elif h >= 0:
            why.append(rule.label(int(h)))
            sent.append(k)
        elif lk is not None:
            why.append(f"not sent: {lk} missing")
        else:
            why.append("not sent: no clause holds")
    return sent, why


def fusion_counts(rows: list[dict], todo) -> dict:
    """{group: {fusion value: rows}} of the chained groups computed now (the summary adds them up)."""
    from collections import Counter

    out = {}
    for g in todo:
        base, group = split(g)
        if base == "captions" and group in _TEXT:
            col = column("fusion", group)
            out[group] = dict(Counter(r.get(col) for r in rows if r["key"] is not None and r.get(col) is not None))
    return out


# -- on the driver: the configs of the groups a pass names -------------------------------------

@dataclass
class TextGroup:
    """A chained group's config (picklable): its text captioner, and the rule selecting the rows
    it is sent (None: every row with what its template reads)."""

    caption: object  # CaptionerConfig of a text backend
    where: str | None = None
    rule_reads: tuple = ()  # the annotators the rule's columns belong to

    @property
    def batch_size(self) -> int:
        """Rows per call of the text model."""
        return self.caption.batch_size

    def refs(self) -> list[str | None]:
        """The groups its template reads (None: the unnamed group)."""
        from recaption.captioners.text import text_template

        return text_template(self.caption).refs()

    def reads(self) -> list[str]:
        """The annotators whose values it reads: each referenced group's captions and CLIP scores,
        and every group a rule column belongs to."""
        out = []
        for g in self.refs():
            out += [f"captions.{g}" if g else "captions", f"clip.{g}" if g else "clip"]
        return list(dict.fromkeys(out + list(self.rule_reads)))


def is_text(cfg) -> bool:
    """Whether a captioner config's backend is a text model (reads no images)."""
    from recaption.captioners.base import BACKENDS

    return not BACKENDS.get(cfg.backend).images


def annotator_of(col: str, numbers: dict) -> str:
    """The annotator a rule column belongs to (`sieve__short` -> `sieve.short`, `clip_raw` -> `clip`;
    `numbers`: every registered number column -> its annotator); a column no group writes, or one
    that is not a number, is one line with the nearest."""
    from recaption.errors import unknown

    families = {"captions": "captions", "clip_captions": "clip", "sieve": "sieve", "sieve_mean": "sieve"}
    group = column_group(col)
    if group is not None:
        base = col[: -len(SEP + group)]
        if base in families:
            if base in ("captions", "clip_captions"):
                raise RecaptionError(f"where: {col} holds a list; a rule compares numbers (sieve__G, clip_raw...)")
            return f"{families[base]}.{group}"
    if col not in numbers:
        raise unknown("where column", col, sorted(numbers) + ["sieve__GROUP", "sieve_mean__GROUP"])
    return numbers[col]


def note_configs(configs: dict) -> None:
    """Learn which named groups of a pass are chained, and what they read (driver and worker)."""
    for n, cfg in configs.items():
        base, group = split(n)
        if base == "captions" and group is not None and isinstance(cfg, TextGroup):
            _TEXT.add(group)
            _READS[group] = tuple(cfg.reads())


def note_settings(settings: dict) -> None:
    """Learn the chained groups a file or folder records (their settings name what they read)."""
    for n, s in (settings or {}).items():
        base, group = split(n)
        if base == "captions" and group is not None and isinstance(s, dict) and "reads" in s:
            _TEXT.add(group)
            _READS.setdefault(group, tuple(s["reads"]))


def note_targets(targets: dict) -> None:
    """Learn the chained groups from a worker's targets (`...groups:TextCaptions__fused`)."""
    for n, t in (targets or {}).items():
        base, group = split(n)
        if group is not None and str(t).rpartition(":")[2].startswith("Text"):
            _TEXT.add(group)


def reads_of(name: str, settings: dict | None = None) -> tuple[str, ...]:
    """The annotators a chained group's captions read (from its recorded settings where given)."""
    base, group = split(name)
    if base != "captions" or group is None:
        return ()
    if isinstance(settings, dict) and isinstance(settings.get("reads"), dict) and settings["reads"]:
        return tuple(settings["reads"])
    return _READS.get(group, ())


def digest(settings) -> str:
    """A short digest of a group's settings (what a chained group records of each group it reads)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_reads(wanted: dict, recorded: dict) -> None:
    """Fill each chained group's `reads` ({annotator: digest of its settings}, from this pass or the
    folder); a group read that is neither is one line with the nearest groups, a cycle names it."""
    from recaption.errors import unknown

    have = dict(recorded or {}) | dict(wanted)
    chains = {split(n)[1]: tuple(_READS.get(split(n)[1], ())) for n in wanted
              if split(n)[0] == "captions" and split(n)[1] in _TEXT}
    check_cycles({g: tuple(split(a)[1] for a in r if split(a)[0] == "captions") for g, r in chains.items()})
    for group, reads in chains.items():
        named = sorted({split(n)[1] for n in have if split(n)[0] == "captions" and split(n)[1] not in (None, group)})
        got = {}
        for a in reads:
            b, g = split(a)
            if a in have:
                got[a] = digest(have[a])
            elif b == "clip":
                continue  # its candidates unscored: the first is the best (docs/formats.md#caption-groups)
            elif b == "captions" and g is None:
                here = ", ".join(named) or "none"
                raise RecaptionError(f"caption group {group!r} reads the unnamed group's caption ({{caption}} in "
                                     "its template), which neither this pass nor the folder has: give --captioner, "
                                     f"or a template naming {{caption:GROUP}} (groups here: {here})")
            elif b == "captions":
                raise unknown("caption group", g, named, f", read by group {group!r} ({{caption:{g}}}); "
                              "neither this pass nor the folder has it")
            elif g is not None and g not in named:
                raise unknown("caption group", g, named, f", whose {b} scores the where rule of group {group!r} "
                              "reads; neither this pass nor the folder has it")
            else:
                raise RecaptionError(f"caption group {group!r}: its where rule reads {a}, which neither this pass "
                                     "nor the folder computes")
        wanted[f"captions.{group}"]["reads"] = got


def check_cycles(graph: dict) -> None:
    """A chained group that reads itself, directly or not, is one line naming the cycle."""
    def visit(g, path):
        if g in path:
            cyc = path[path.index(g):] + [g]
            raise RecaptionError(f"caption groups read each other in a cycle: {' -> '.join(map(str, cyc))}")
        for nxt in graph.get(g, ()):
            if nxt in graph:
                visit(nxt, path + [g])

    for g in graph:
        visit(g, [])

def parse_spec(spec: str) -> tuple[str, str, dict]:
    """`NAME=CAPTIONER[,KEY=VALUE...]` -> (name, captioner, overrides); keys are the captioner
    options (`decoding`, `num_beams`, `max_new_tokens`, `prompt`, `template`, `model`, ...), and
    `where` for a text model's group."""
    import yaml

    head, *rest = [p.strip() for p in str(spec).split(",")]
    name, eq, ref = head.partition("=")
    if not eq or not ref.strip():
        raise RecaptionError(f"--group takes NAME=CAPTIONER[,KEY=VALUE...], got {spec!r}")
    overrides = {}
    for part in rest:
        k, eq, v = part.partition("=")
        if not eq or not k.strip():
            raise RecaptionError(f"--group {spec}: {part!r} is not KEY=VALUE")
        key = k.strip().replace("-", "_")
        overrides[key] = None if v == "" else v.strip() if key == "where" else yaml.safe_load(v)
    return check_name(name.strip()), ref.strip(), overrides


def caption_config(group: str, ref: str, overrides: dict, options: bool = True, where: str | None = None,
                   numbers: dict | None = None):
    """A group's config: its captioner's `CaptionerConfig` with the captioner options it sets
    (`options`: named as the CLI's captioner options are, else as a recipe's `caption` section);
    a `TextGroup` around it for a text model's (chained) group, with its `where` rule."""
    cfg = _captioner_config(group, ref, overrides, options)
    if not is_text(cfg):
        if where is not None:
            raise RecaptionError(f"caption group {group!r}: where= selects the rows a text model's group is sent "
                                 f"(backends text, vllm-text); {cfg.backend} captions every image")
        return cfg
    cols = Rule.parse(where).columns() if where is not None else []
    out = TextGroup(cfg, where, tuple(dict.fromkeys(annotator_of(c, numbers or {}) for c in cols)))
    if group in out.refs():
        raise RecaptionError(f"caption groups read each other in a cycle: {group} -> {group}")
    return out


def _captioner_config(group: str, ref: str, overrides: dict, options: bool = True):
    from recaption.annotators.captions import Captions
    from recaption.captioners.base import load_preset

    kw = dict(overrides)
    if options:
        known = {o.name for o in Captions.options} - {"captioner", "group"}
        bad = sorted(set(kw) - known)
        if bad:
            from recaption.errors import unknown

            raise unknown(f"caption group {group!r} option", bad[0], sorted(known))
        if "decoding" in kw:
            kw["strategy"] = kw.pop("decoding")
    try:
        return load_preset(str(ref), **{k: v for k, v in kw.items() if v is not None})
    except RecaptionError as e:
        raise RecaptionError(f"caption group {group!r}: {e}") from None


def expand(groups: dict, configs: dict) -> dict:
    """{annotator: config} of named groups ({name: CaptionerConfig}): each group's captioner, and
    its CLIP and SIEVE scores where the pass computes the unnamed group's (same models)."""
    out: dict = {}
    for group, cap in groups.items():
        check_name(group)
        out[f"captions.{group}"] = cap
        for base in FAMILIES[1:]:
            if configs.get(base) is not None:
                out[f"{base}.{group}"] = configs[base]
    note_configs(out)
    check_cycles({g: tuple(r for r in c.refs() if r in groups) for g, c in groups.items() if isinstance(c, TextGroup)})
    return out


def from_specs(specs, numbers: dict | None = None) -> dict:
    """{name: CaptionerConfig} from `--group` values (`numbers`: the number columns a `where` rule
    may read, `annotators.number_columns()`); a name given twice is refused."""
    out: dict = {}
    for spec in specs or ():
        name, ref, overrides = parse_spec(spec)
        if name in out:
            raise RecaptionError(f"--group {name} is given twice")
        where = overrides.pop("where", None)
        out[name] = caption_config(name, ref, overrides, where=None if where is None else str(where), numbers=numbers)
    return out


def from_recipe(section, numbers: dict | None = None) -> dict:
    """{name: CaptionerConfig} from a recipe's `groups: {NAME: {captioner: ..., caption: {...}}}`
    (or `NAME: CAPTIONER`)."""
    if not section:
        return {}
    if not isinstance(section, dict):
        raise RecaptionError("groups must be a mapping of group name -> {captioner, caption}")
    out = {}
    for name, body in section.items():
        check_name(str(name))
        if isinstance(body, str):
            body = {"captioner": body}
        if not isinstance(body, dict) or not body.get("captioner"):
            raise RecaptionError(f"groups.{name} needs a captioner (and may have caption: {{options}})")
        bad = set(body) - {"captioner", "caption", "where"}
        if bad:
            raise RecaptionError(f"unknown groups.{name} keys {sorted(bad)}; known: ['caption', 'captioner', 'where']")
        caption = body.get("caption") or {}
        if not isinstance(caption, dict):
            raise RecaptionError(f"groups.{name}.caption must be a mapping")
        where = body.get("where")
        out[str(name)] = caption_config(str(name), body["captioner"], caption, options=False,
                                        where=None if where is None else str(where), numbers=numbers)
    return out


def in_file(recorded) -> list[str]:
    """The named caption groups a file (or folder) records, in order."""
    return list(dict.fromkeys(g for n in recorded or () for b, g in [split(n)] if g is not None and b == "captions"))
