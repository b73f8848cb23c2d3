"""Which column groups of one annotation file still need work, and writing the file whole.

An existing file records the settings that wrote each group. A group written with the wanted
settings is finished; a group that is missing is added; a group written with other settings is
redone only with --overwrite (the folder claim refuses it up front otherwise). New values of a
group make the groups computed from it stale (new captions, old scores): those are dropped unless
they are being redone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from recaption import annotators as registry
from recaption.annotators import groups
from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io import folders
from recaption.io.atomic import exists


@dataclass
class ShardWork:
    """What to do for one shard's annotation file."""

    todo: set[str] = field(default_factory=set)  # groups to compute now
    keep: dict[str, dict] = field(default_factory=dict)  # groups kept from the file, with their settings
    rows: list[dict] | None = None  # the file's rows when they are built upon (captions kept)
    existing_rows: int = 0
    # key -> the kept groups' values, where the rows are made anew from the shard (new unnamed
    # captions): what the file held for the groups it keeps (named caption groups, metrics)
    carry: dict = field(default_factory=dict)

    def needs_images(self, built: dict | None = None) -> bool:
        """Whether the work reads the shard's samples (captions, CLIP, metrics, re-ranking...); `built`,
        the worker's annotators by name, where one reads none though its class does (a tag head
        over saved embeddings)."""
        built = built or {}
        return any(built[g].reads_images if g in built else registry.get(g).reads_images
                   for g in self.todo)


def plan_shard(url: str, wanted: dict[str, dict], overwrite: bool) -> ShardWork:
    """Decide the groups to compute for `url` (an annotation file that may exist): those it lacks,
    those recorded with other settings (with `overwrite`), and those whose own files beside it
    (`Annotator.files`) are missing."""
    if not exists(url):
        return ShardWork(todo=set(wanted))
    table = ann.read(url)
    recorded = (ann.metadata(table) or {}).get("groups") or {}
    ann_dir, _, base = url.rpartition("/")
    name = base[:-len(".parquet")] if base.endswith(".parquet") else base
    todo = set()
    for g, settings in wanted.items():
        same, unknown = folders.compare_settings(recorded.get(g), settings, registry.get(g).added_settings)
        if g in recorded and same and unknown and overwrite:
            todo.add(g)  # written by an older recaption that recorded less: --overwrite redoes what it cannot tell
            continue
        if g in recorded and same:
            if all(exists(f) for f in registry.get(g).files(settings, ann_dir, name)):
                continue
            todo.add(g)  # its results are in the file, but not the files it writes beside it
            continue
        if g in recorded and not overwrite:
            raise RecaptionError(f"{url}: {g} were written with other settings; add --overwrite to redo them")
        todo.add(g)
    deps = registry.dependents(dict(recorded) | dict(wanted))
    stale = set().union(*(deps.get(g, set()) for g in todo)) if todo else set()
    keep = {g: s for g, s in recorded.items() if g not in todo and g not in stale}
    work = ShardWork(todo=todo, keep=keep, existing_rows=table.num_rows)
    if todo and "captions" not in todo:
        work.rows = table.to_pylist()
        for r in work.rows:
            for g in todo:
                registry.blank_group(r, g)
    elif todo and keep:
        cols = [c for g in keep if g in registry.names() or groups.is_named(g) for c in registry.group_columns(g)]
        cols = [c for c in cols if c in table.column_names]
        kept = table.select(["key", *cols]).to_pylist()
        work.carry = {r.pop("key"): r for r in kept if r["key"] is not None}
    return work


def commit(url: str, rows: list[dict], work: ShardWork, wanted: dict[str, dict]) -> None:
    """Write the file atomically, recording the settings of every group it holds."""
    held = dict(work.keep) | {g: wanted[g] for g in work.todo}
    for r in rows:
        kept = work.carry.get(r["key"]) if work.carry else None
        if kept:
            r.update(kept)
    for g in registry.names():
        if g not in held:
            for r in rows:  # no stale values under a group the file does not claim
                registry.blank_group(r, g)
    named = [c for g in held if groups.is_named(g) for c in registry.get(g).columns]
    claimed = {c.name for c in named}
    for r in rows:
        for k in [k for k in r if k not in claimed and groups.column_group(k) is not None]:
            del r[k]  # a named group the file no longer claims (its captions were redone)
        for c in named:
            if c.name not in r:
                r[c.name] = list(c.blank) if isinstance(c.blank, list) else c.blank
    ann.write(url, rows, held, registry.schema(held))
