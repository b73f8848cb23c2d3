"""The annotator registry: every column group of the annotation files, in one table.

Everything that depends on which groups exist is derived from here: the annotation schema and a
blank row, which groups a new result makes stale, the order they run in, the settings a folder
records, the options the CLI and recipes offer, the report's histograms and the filter rules.
A new annotator is a module (a subclass of `recaption.annotators.base.Annotator`) plus one line
in `BUILTIN`, a `register(...)` call, or an entry point in the `recaption.annotators` group of a
package's metadata. Classes are imported when first asked for, and import nothing heavy.
"""
from __future__ import annotations

from recaption.annotators.base import Annotator, Column, RunContext  # noqa: F401  (the contract, re-exported)
from recaption.errors import RecaptionError
from recaption.registry import Registry, load, target_of

# name -> "module:Class"; the order is the order of the file's extra columns and the tie-break of run order
BUILTIN = {
    "metrics": "recaption.annotators.metrics:Metrics",
    "captions": "recaption.annotators.captions:Captions",
    "clip": "recaption.annotators.clip:Clip",
    "sieve": "recaption.annotators.sieve:Sieve",
    "length": "recaption.annotators.length:Length",  # what each CLIP score saw (issue 36, 4)
    "rerank": "recaption.annotators.rerank:Rerank",
    "fingerprints": "recaption.annotators.fingerprints:Fingerprints",
    # LAION's tags (issue 34): heads over the CLIP embedding, the watermark net, Open-NSFW
    "punsafe": "recaption.annotators.punsafe:Punsafe",
    "pwatermark": "recaption.annotators.pwatermark:Pwatermark",
    "aesthetic": "recaption.annotators.aesthetic:Aesthetic",
    "open_nsfw": "recaption.annotators.open_nsfw:OpenNsfw",
}
ENTRY_POINTS = "recaption.annotators"


def _check(name: str, cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Annotator)):
        raise RecaptionError(f"annotator {name!r}: {cls!r} is not an Annotator class")
    if cls.name != name:
        raise RecaptionError(f"annotator {cls.__name__} must be registered under its name ({cls.name!r}), not {name!r}")


REGISTRY = Registry("annotator", ENTRY_POINTS, _check)
for _name, _target in BUILTIN.items():
    REGISTRY.register(_name, _target, builtin=True)


def register(annotator: type | str, name: str | None = None) -> None:
    """Add an annotator: its class, or "module:Class" (importable in worker processes too). A name
    already taken is refused; options must not clash with another annotator's."""
    cls = load(annotator, "annotator") if isinstance(annotator, str) else annotator
    name = name or cls.name
    _check(name, cls)
    if name in REGISTRY:
        raise RecaptionError(f"an annotator named {name!r} is registered already")
    taken = {o.name: a.name for a in classes() for o in a.options}
    clash = [o.name for o in cls.options if o.name in taken]
    if clash:
        raise RecaptionError(f"annotator {name}: option {clash[0]!r} is {taken[clash[0]]}'s already")
    REGISTRY.register(name, annotator)


def ensure(targets: dict[str, str]) -> None:
    """Make annotators known here by their targets (name -> "module:Class"): a worker process or
    Ray actor learns the annotators the driver registered at run time, which its own imports did
    not register). Named caption groups are made, never registered (`recaption.annotators.groups`)."""
    from recaption.annotators import groups

    groups.note_targets(targets)  # a chained group's classes are its own (`TextCaptions__fused`)
    REGISTRY.ensure({n: t for n, t in targets.items() if not groups.is_named(n)})


def unregister(name: str) -> None:
    """Remove a registered annotator (built-in ones stay)."""
    REGISTRY.unregister(name)


def names() -> list[str]:
    """Every registered annotator's name, in registry order."""
    return REGISTRY.names()


def get(name: str) -> type[Annotator]:
    """The class of a registered annotator, or of a named caption group's (`captions.long`); an
    unknown name: one line with the nearest ones."""
    from recaption.annotators import groups

    if name not in REGISTRY and groups.is_named(name):
        return groups.named(name)
    return REGISTRY.get(name)


def classes() -> list[type[Annotator]]:
    """Every registered annotator class, in registry order."""
    return [get(n) for n in names()]


def target(name: str) -> str:
    """Where a worker imports the annotator from ("module:Class")."""
    return target_of(get(name))


def load_target(text: str) -> type[Annotator]:
    """The class a target names (in a worker)."""
    return load(text, "annotator")


# -- what is derived from the table ---------------------------------------------------------
def fixed_names() -> list[str]:
    """The columns every annotation file has (docs/formats.md#annotation-files), in order."""
    from recaption.io.annotations import COLUMNS

    return list(COLUMNS)


def extra_columns() -> list[Column]:
    """The columns after the fixed ones, group by group in registry order."""
    fixed = set(fixed_names())
    return [c for a in classes() for c in a.columns if c.name not in fixed]


def schema(held=()):
    """The arrow schema of an annotation file: the fixed columns, then every group's others, then
    the columns of the named caption groups in `held` (the groups a file holds), then the shard's
    member index and the txt and json digests (`recaption.io.tarindex`, recorded by whatever reads
    the shard)."""
    import pyarrow as pa

    from recaption.annotators.base import arrow_type
    from recaption.io import tarindex
    from recaption.io.annotations import SCHEMA

    from recaption.annotators.groups import is_named

    named = [c for g in sorted(held, key=_group_order) if is_named(g) for c in get(g).columns]
    return pa.schema(list(SCHEMA) + [pa.field(c.name, arrow_type(c.type)) for c in extra_columns() + named]
                     + [pa.field(n, arrow_type(t)) for n, t in tarindex.COLUMNS + tarindex.DIGESTS])


def _group_order(name: str):
    from recaption.annotators import groups

    base, group = groups.split(name)
    return (group or "", groups.FAMILIES.index(base) if group else 0)


def group_columns(name: str) -> tuple[str, ...]:
    """The columns a group writes."""
    return tuple(c.name for c in get(name).columns)


def column_type(column: str) -> str | None:
    """A column's declared type (None: not a group's column)."""
    return next((c.type for a in classes() for c in a.columns if c.name == column), None)


def blanks() -> dict:
    """Every group column's value when not computed."""
    return {c.name: (list(c.blank) if isinstance(c.blank, list) else c.blank) for a in classes() for c in a.columns}


def empty_row(key, shard, raw_caption=None) -> dict:
    """A fresh ok row: no captions, no scores."""
    return {"key": key, "shard": shard, "raw_caption": raw_caption, **blanks(), "status": "ok", "error": None}


def error_row(key, shard, error: str, raw_caption=None) -> dict:
    """A row for a sample (or, with key None, a whole shard) that could not be processed."""
    return empty_row(key, shard, raw_caption) | {"status": "error", "error": error}


def blank_group(row: dict, group: str) -> None:
    """Reset one group's columns in a row, in place."""
    for c in get(group).columns:
        row[c.name] = list(c.blank) if isinstance(c.blank, list) else c.blank


def dependents(also=()) -> dict[str, set[str]]:
    """group -> the groups computed from it, directly or not (new captions make scores stale);
    with the named caption groups of `also` and their scores (`captions.long` -> `clip.long`...),
    and the chained groups that read them (`also` as {group: settings}: their recorded reads)."""
    from recaption.annotators import groups

    if isinstance(also, dict):
        groups.note_settings(also)
    named = {f"{b}.{g}" for n in also for g in [groups.split(n)[1]] if g is not None for b in groups.FAMILIES}
    direct = {a.name: set(a.after) for a in classes() + [get(n) for n in sorted(named)]}
    for n in named:
        direct[n] |= set(groups.reads_of(n, also.get(n) if isinstance(also, dict) else None))
    out: dict[str, set[str]] = {}
    for g in direct:
        seen, todo = set(), [g]
        while todo:
            cur = todo.pop()
            for other, after in direct.items():
                if cur in after and other not in seen:
                    seen.add(other)
                    todo.append(other)
        out[g] = seen
    return out


def run_order(wanted) -> list[str]:
    """The groups of `wanted` in an order where each comes after the groups it is computed from
    (registry order otherwise); a chained caption group after the groups it reads (`wanted` as
    {name: config} says what they read)."""
    from recaption.annotators import groups

    if isinstance(wanted, dict):
        groups.note_configs(wanted)
    wanted = list(wanted)
    left = [n for n in names() if n in set(wanted)] + [n for n in wanted if n not in REGISTRY]
    after = {n: set(get(n).after) | set(groups.reads_of(n)) for n in left}
    order: list[str] = []
    while left:
        ready = next((n for n in left if not (after[n] & set(left))), left[0])
        order.append(ready)
        left.remove(ready)
    return order


def configure(values: dict, kinds=("captioner", "scorer")) -> dict:
    """Configs of the annotators a verb offers (by `kind`), from its option values; `always`
    annotators of other kinds get their defaults. Off ones are left out."""
    from recaption.annotators import groups

    out: dict = {}
    for a in classes():
        cfg = a.configure(values, out) if a.kind in kinds else a.default()
        if cfg is not None:
            out[a.name] = cfg
    named = groups.from_specs(values.get("group"), number_columns()) if "captioner" in kinds else {}
    return out | groups.expand(named, out)


def from_recipe(recipe: dict) -> dict:
    """Configs of the annotators a recipe asks for (and the `always` ones)."""
    out: dict = {}
    for a in classes():
        try:
            cfg = a.from_recipe(recipe, out)
        except RecaptionError as e:
            raise RecaptionError(f"{a.name}: {e}" if not str(e).startswith(a.name) else str(e)) from None
        if cfg is not None:
            out[a.name] = cfg
    return out | named_groups(recipe.get("groups"), out)


def named_groups(section, configs: dict) -> dict:
    """The annotators of named caption groups given as a recipe's `groups` section ({NAME: CAPTIONER}
    or {NAME: {captioner, caption, where}}), scored by the CLIP and SIEVE of `configs`."""
    from recaption.annotators import groups

    try:
        named = groups.from_recipe(section, number_columns())
    except RecaptionError as e:
        raise RecaptionError(f"groups: {e}" if not str(e).startswith("groups") else str(e)) from None
    return groups.expand(named, configs)


def number_columns() -> dict[str, str]:
    """Every number column a registered annotator declares -> its annotator (what a chained
    group's `where` rule may read, besides the named groups' SIEVE columns)."""
    return {c.name: a.name for a in classes() for c in a.columns if c.type in ("float32", "float64", "int32", "int64")}


def recipe_keys() -> set[str]:
    """Every recipe section an annotator reads."""
    return {k for a in classes() for k in (a.recipe_keys or (a.name,))}


def settings(configs: dict, run: RunContext) -> dict[str, dict]:
    """Group -> the settings that identify its results, for every configured annotator."""
    return {n: get(n).settings(cfg, run) for n, cfg in configs.items()}


def tag_columns() -> list[str]:
    """The tag columns (`punsafe`, `pwatermark`, ...): the columns of every group that declares a
    `tag` (`annotators.clip_heads`), what `mix --json-tags` may write into a sample's json."""
    return [c.name for a in classes() if getattr(a, "tag", "") for c in a.columns]


def sensitive_columns() -> list[str]:
    """The NSFW probability columns (`punsafe`, `open_nsfw`): the report blurs the grid of each one's
    highest samples (`recaption report --unblur` shows them)."""
    return [c.name for a in classes() if a.sensitive for c in a.columns]


def rule_kinds() -> dict:
    """Every filter rule the annotators offer, by name."""
    out = {}
    for a in classes():
        for r in a.rules:
            out[r.name] = r
    return out


def group_hint(group: str) -> str:
    """How to add a group to an annotation folder, for error lines."""
    try:
        return get(group).add_hint
    except RecaptionError:
        return ""
