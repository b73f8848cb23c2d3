"""Named caption groups: several captioners in one annotation folder (docs/formats.md#caption-groups).

The unnamed group is the `captions`, `clip` and `sieve` annotators as they always were. A named
group G is the same three annotators under the names `captions.G`, `clip.G` and `sieve.G`, each
recorded with its own settings (so each resumes, is refused or is redone on its own), writing the
same columns with `__G` after their names: `captions__G`, `captioner__G`, `clip_captions__G`,
`sieve__G`, `sieve_mean__G`, `sieve_best__G`. `clip_raw` is the unnamed `clip` group's alone: a
named group scores its candidates with the pass's CLIP model and the image embedding it already
made. New captions of a group make only that group's scores stale, so a group added to a finished
folder leaves every other group's columns, and the mixes made from them, as they were.

A named group's classes are made here when first asked for (`annotators.get("captions.long")`),
never registered: the registry's tables (schema, options, recipe sections) stay those of the
unnamed groups, and a file's own named groups are added to its schema where it holds them.
Workers import them as "recaption.annotators.groups:Captions__long" (this module's `__getattr__`).
"""
from __future__ import annotations

import re

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


GROUP_COLUMNS = ("captions", "captioner", "clip_captions", "sieve", "sieve_mean", "sieve_best",
                 "clip_captions_tokens", "clip_captions_sent_min", "clip_captions_sent_mean", "captions_clean")


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
    if name not in _MADE:
        _MADE[name] = _make(base, group)
    return _MADE[name]


def _make(base: str, group: str) -> type:
    from recaption.annotators.base import Column
    from recaption.registry import load

    parent = load(PARENTS[base], "annotator")
    mixin = {"captions": _NamedCaptions, "clip": _NamedClip, "sieve": _NamedRows, "length": _NamedRows}[base]
    unnamed = {"clip_raw", *getattr(parent, "unnamed_only", ())}  # the alt-text's scores are the unnamed group's
    own = [c for c in parent.columns if c.name not in unnamed]
    cls = type(f"{parent.__name__}{SEP}{group}", (mixin, parent), {
        "__module__": __name__, "__doc__": f"The {base} annotator of caption group {group!r}.",
        "name": f"{base}.{group}", "group": group,
        "columns": tuple(Column(column(c.name, group), c.type, c.blank) for c in own),
        "after": tuple(f"{a}.{group}" for a in parent.after if a in FAMILIES),
        "timer": f"{parent.timer}.{group}" if parent.timer else parent.timer,
        "options": (), "rules": (), "hists": (), "recipe_keys": (), "always": False,
        "renames": {c: column(c, group) for c in GROUP_COLUMNS},
        "add_hint": f"recaption annotate INPUT -o ANN --group {group}=CAPTIONER",
    })
    cls.__qualname__ = cls.__name__
    return cls


def __getattr__(attr: str):
    """`Captions__long` (a worker's target) -> the class of `captions.long`."""
    head, sep, group = attr.partition(SEP)
    by_class = {"Captions": "captions", "Clip": "clip", "Sieve": "sieve", "Length": "length"}
    if sep and head in by_class and NAME.fullmatch(group):
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


# -- on the driver: the configs of the groups a pass names -------------------------------------
def parse_spec(spec: str) -> tuple[str, str, dict]:
    """`NAME=CAPTIONER[,KEY=VALUE...]` -> (name, captioner, overrides); keys are the captioner
    options (`decoding`, `num_beams`, `max_new_tokens`, `prompt`, `template`, `model`, ...)."""
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
        overrides[k.strip().replace("-", "_")] = yaml.safe_load(v) if v != "" else None
    return check_name(name.strip()), ref.strip(), overrides


def caption_config(group: str, ref: str, overrides: dict, options: bool = True):
    """A group's `CaptionerConfig`: its captioner with the captioner options it sets (`options`:
    named as the CLI's captioner options are, else as a recipe's `caption` section)."""
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
    return out


def from_specs(specs) -> dict:
    """{name: CaptionerConfig} from `--group` values; a name given twice is refused."""
    out: dict = {}
    for spec in specs or ():
        name, ref, overrides = parse_spec(spec)
        if name in out:
            raise RecaptionError(f"--group {name} is given twice")
        out[name] = caption_config(name, ref, overrides)
    return out


def from_recipe(section) -> dict:
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
        bad = set(body) - {"captioner", "caption"}
        if bad:
            raise RecaptionError(f"unknown groups.{name} keys {sorted(bad)}; known: ['caption', 'captioner']")
        caption = body.get("caption") or {}
        if not isinstance(caption, dict):
            raise RecaptionError(f"groups.{name}.caption must be a mapping")
        out[str(name)] = caption_config(str(name), body["captioner"], caption, options=False)
    return out


def in_file(recorded) -> list[str]:
    """The named caption groups a file (or folder) records, in order."""
    return list(dict.fromkeys(g for n in recorded or () for b, g in [split(n)] if g is not None and b == "captions"))
