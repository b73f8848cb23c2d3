"""Plan a mix: decide every row once, per input shard, into `OUT/_decisions/NAME.parquet`; then
fix which kept samples each output shard holds.

A decisions file has one row per annotation row, in input order: `key`, `kept`, `reason` (why it
was dropped), `caption_source`, `caption` (the `txt` written), `raw_caption`,
`synthetic_caption`, `clip_raw`, `clip_synthetic`, `sieve`, `blend`, `captioner`; missing scores
are null; then the shard's member index (`recaption.io.tarindex`), where the annotation file has
one made from the shard as it is now, so that the writer copies spans. Its parquet metadata
(`recaption.decisions`) says what made it: schema version, the shard's name, URL, size and mtime,
the annotation file, strategy, threshold, filter rules and min/max, and the `--caption-keys`
level (`all` adds a `captions` column: every candidate, for the keys; several synthetic groups a
`synthetic_group` column: the one that gave each row's synthetic caption). A row a filter rule
dropped has that rule and its own value as its reason. The write stage reads its slice from
there and decides nothing again; the files stay after the run, so a loader can apply a mix
without the mixed tars.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io import tarindex
from recaption.io.atomic import atomic_open, file_info, join, makedirs
from recaption.io.sources import is_gzip_name
from recaption.mixing import columns as colmod
from recaption.mixing import provenance
from recaption.mixing.files import AnnFile, read_file
from recaption.mixing.pool import Outcomes, Pool, error_reasons, group_counts, mix_counts
from recaption.mixing.strategies import (ERROR, FILTERED, KEEP_RAW, KEEP_SYN, REASONS, SHARD_ERROR, MixConfig,
                                         PoolNumbers, decide_columns, reason_text)
from recaption.mixing.strategies.base import n_codes
from recaption.output import caption_keys
from recaption.scoring.blend import score_column

VERSION = 1
FOLDER = "_decisions"
META_KEY = b"recaption.decisions"
DROPPED_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("reason", pa.string())])
SCHEMA = pa.schema([
    ("key", pa.string()), ("kept", pa.bool_()), ("reason", pa.string()), ("caption_source", pa.string()),
    ("caption", pa.string()), ("raw_caption", pa.string()), ("synthetic_caption", pa.string()),
    ("clip_raw", pa.float64()), ("clip_synthetic", pa.float64()), ("sieve", pa.float64()),
    ("blend", pa.float64()), ("captioner", pa.string()),
])


def decisions_path(out_dir: str, name: str) -> str:
    """Where the decisions file of input shard `name` goes in a mix folder."""
    return join(join(out_dir, FOLDER), f"{name}.parquet")


def recorded_name(name: str) -> str:
    """How a mix folder's record lists the decisions file of input shard `name`."""
    return f"{FOLDER}/{name}.parquet"


def listed_decisions(rec: dict) -> set[str] | None:
    """The input shards whose decisions files a mix folder's record lists; None where it lists the
    `_decisions` folder whole (folders written before the files were recorded one by one)."""
    written = rec.get("written", [])
    if FOLDER in written:
        return None
    pre = FOLDER + "/"
    # a name with a further `/` lies outside the folder's own files (an edited record): never followed
    return {n[len(pre):].removesuffix(".parquet") for n in written
            if n.startswith(pre) and n.endswith(".parquet") and "/" not in n[len(pre):]}


def is_decisions_file(url: str) -> bool:
    """Whether a file is a decisions file recaption wrote (a parquet with its `recaption.decisions`
    metadata): what an older record, naming `_decisions` whole, may remove of that folder."""
    if not url.endswith(".parquet"):
        return False
    try:
        with ann.open_parquet(url) as pf:
            return META_KEY in (pf.schema_arrow.metadata or {})
    except Exception:  # not a parquet: not ours
        return False


def prune(out_dir: str, rec: dict, planned: set[str]) -> list[str]:
    """Remove the decisions files an earlier plan of this folder wrote for input shards not planned
    now (the record's, or in an older record's `_decisions` folder the decisions files in it), and
    list only the planned ones in the record; returns the shards whose files went."""
    from recaption.io import folders
    from recaption.io.atomic import exists, listdir, remove

    listed = listed_decisions(rec)
    if listed is None:  # an older record: the folder whole; its decisions files are recaption's
        listed = {n.removesuffix(".parquet") for n in listdir(join(out_dir, FOLDER))
                  if n.endswith(".parquet") and is_decisions_file(decisions_path(out_dir, n.removesuffix(".parquet")))}
    gone = []
    for name in sorted(listed - planned):
        if exists(decisions_path(out_dir, name)):
            remove(decisions_path(out_dir, name))
            gone.append(name)
    stale = {recorded_name(n) for n in listed - planned} | {FOLDER}
    written = [n for n in rec.get("written", []) if n not in stale]
    if written != rec.get("written", []):
        rec["written"] = written
        folders.write_record(out_dir, rec)
    return gone


def _null_floats(x: np.ndarray) -> pa.Array:
    x = np.asarray(x, dtype=np.float64)
    return pa.array(x, mask=~np.isfinite(x))


def decisions_table(t: pa.Table, c: colmod.Columns, code: np.ndarray, blend: np.ndarray,
                    threshold: float | None, filters=None, removed=None) -> pa.Table:
    """One annotation table's decisions (columns as SCHEMA), built column by column; `removed`
    (`recaption.mixing.removal.Removed`, with reasons) gives its duplicates' and overlaps'."""
    syn = colmod.synthetic_text(t["captions"], c.syn_idx)
    raw = t["raw_caption"].combine_chunks()
    is_raw, is_syn = pa.array(code == KEEP_RAW), pa.array(code == KEEP_SYN)
    none = pa.nulls(len(code), pa.string())
    texts = pa.array([None if k not in REASONS else reason_text(k, threshold) for k in range(n_codes())],
                     pa.string())
    reason = texts.take(pa.array(code.astype(np.int32)))
    before = pa.array((code == ERROR) | (code == SHARD_ERROR))
    reason = pc.if_else(before, error_reasons(t["error"].combine_chunks(), c.keyed), reason)
    if filters and np.any(code == FILTERED):  # the rule and the row's own value
        reason = pc.if_else(pa.array(code == FILTERED), filters.reasons(t, c.fcode), reason)
    if removed is not None and len(removed):  # the partner or evaluation image, the rule and its value
        at = np.full(len(code), -1, dtype=np.int64)
        at[removed.rows] = np.arange(len(removed))
        reason = pc.if_else(pa.array(at >= 0), removed.reasons.take(pa.array(at, mask=at < 0)), reason)
    source = pa.array(["raw", "synthetic"], pa.string()).take(pa.array(np.minimum(code, 1).astype(np.int32),
                                                                       mask=code > KEEP_SYN))
    return pa.table([
        t["key"].combine_chunks(), pa.array(code <= KEEP_SYN), reason, source,
        pc.if_else(is_raw, raw, pc.if_else(is_syn, syn, none)), raw, syn,
        _null_floats(score_column(t["clip_raw"])), _null_floats(c.clip_syn), _null_floats(score_column(t["sieve"])),
        _null_floats(blend), t["captioner"].combine_chunks(),
    ], schema=SCHEMA)


@dataclass
class FilePlan:
    """One input shard's decisions: its file, its kept count and outcome codes."""

    name: str
    url: str
    decisions: str
    kept: int
    codes: list
    digest: str = ""  # of the decisions file's bytes (`provenance.decisions_digest`)
    unannotated: int = 0  # samples of the shard no annotation row lists (dropped: `provenance.NO_ROW`)
    repeated: str | None = None  # why no sample of it can be written or read (`repeated_kept_key`)
    groups: dict | None = None  # several synthetic groups: `pool.group_counts` of its rows


def plan_file(f: AnnFile, cfg: MixConfig, numbers: PoolNumbers, out_dir: str, cache=None) -> FilePlan:
    """Decide one input shard's rows and write its decisions file (whole or not at all)."""
    filters = cfg.filter_set
    scores = dict.fromkeys(cfg.score_columns, True)  # an annotator's column the strategy cuts on
    keyed = key_groups(f, cfg)  # the named groups whose keys the json gets, other than the synthetic one
    extra = [colmod.stored_name(c, g) for g in keyed for c in ("captions", "clip_captions") if g != f.group]
    if caption_keys.needs_sentences(cfg.caption_keys):  # which captions are longer than the CLIP context
        check_lengths(f, keyed)
        extra += ["clip_context", "clip_captions_tokens"] + [colmod.stored_name("clip_captions_tokens", g)
                                                             for g in keyed if g != f.group]
    t = read_file(f, colmod.columns_for(True, text=True, filters=filters, scores=scores) + extra, filters=filters,
                  scores=scores)
    colmod.check_pairing(t, f.path, f.group)  # what a dry run relied on holds, or the mix stops here
    c = colmod.from_table(t, filters, f.removed, scores)
    d = decide_columns(c, cfg, numbers)
    table = decisions_table(t, c, d.code, d.blend, numbers.threshold, filters, f.removed)
    if colmod.CHOSEN in t.column_names:  # several synthetic groups: which gave each row's synthetic caption
        table = table.append_column(colmod.CHOSEN, t[colmod.CHOSEN].combine_chunks().cast(pa.string()))
    if caption_keys.needs_candidates(cfg.caption_keys):  # what the keys of every candidate are written from
        table = table.append_column("captions", t["captions"].combine_chunks().cast(pa.list_(pa.string())))
    if cfg.caption_keys != "none":
        table = table.append_column(caption_keys.GROUPS, group_keys(t, c, keyed, f.group, cfg.caption_keys))
    if cfg.json_tags:  # the tags a kept sample's json gets, under their column names
        tags = ann.read_table(f.path, columns=list(cfg.json_tags))
        table = table.append_column(caption_keys.TAGS, caption_keys.tag_column(tags, cfg.json_tags))
    stored = colmod.as_stored(t, f.group, f.path)  # what the mix read, as the file names it
    shard_now = file_info(f.url)
    table = tarindex.carry(table, f.path, shard_now)  # the member index, where it is the shard's as it is
    table = in_input_order(table)  # an annotation file's rows may have been reordered: the tar's order holds
    lost = []  # samples of the tar no row lists: the index shows where they lie
    if tarindex.NAMES[0] in table.column_names and not is_gzip_name(f.url):
        lost = provenance.unannotated(f.url, table)
        if lost:
            table = provenance.with_unannotated(table, lost)
    recorded = provenance.recorded_identity(f.path)
    weak = bool(recorded) and tarindex.change(shard_now, recorded) == tarindex.NO_STAMP
    meta = {"version": VERSION, "shard": f.name, "input": f.url, **shard_now, "annotations": f.path,
            "annotation_digest": provenance.table_digest(stored),
            "annotation_columns": sorted(stored.column_names),
            **({"synthetic_group": synthetic_group_setting(f.group)} if f.group is not None else {}),
            **({provenance.VERIFY_IMAGES: True} if weak else {}),
            "strategy": cfg.strategy, "threshold": numbers.threshold, "threshold_column": cfg.threshold_column,
            "alpha": cfg.alpha, "filter_synthetic": cfg.filter_synthetic, "filters": cfg.filters,
            "caption_keys": cfg.caption_keys, **removal_settings(cfg),
            **({"json_tags": cfg.json_tags} if cfg.json_tags else {}),
            "min_max": {"clip_raw": [numbers.clip_raw.lo, numbers.clip_raw.hi],
                        "sieve": [numbers.sieve.lo, numbers.sieve.hi]}}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    path = decisions_path(out_dir, f.name)
    with atomic_open(path) as out:
        out.write(buf.getvalue())
    codes = np.bincount(d.code, minlength=n_codes())
    return FilePlan(f.name, f.url, path, int(codes[KEEP_RAW] + codes[KEEP_SYN]), codes.tolist(),
                    provenance.decisions_digest(buf.getvalue()), len(lost), repeated_kept_key(table),
                    group_counts(c, d.code))


def synthetic_group_setting(group) -> str | list[str]:
    """The `synthetic_group` a decisions file records: one name as itself, several as a list (as
    `MixConfig.synthetic_group` holds them, so verify compares the two)."""
    names = colmod.group_names(group)
    return names[0] if len(names) == 1 else list(names)


def repeated_kept_key(t: pa.Table) -> str | None:
    """One line where a key is kept in more than one row of decisions `t` (else None): such a
    key cannot say which sample is which, so neither the writer nor an overlay reader uses it.
    (A key the shard itself repeats has its later samples recorded as errors, which are dropped.)"""
    keys = t.filter(t["kept"])["key"].drop_null()
    if pc.count_distinct(keys).as_py() == len(keys):
        return None
    counts = pc.value_counts(keys)
    twice = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
    meta = json.loads((t.schema.metadata or {}).get(META_KEY, b"{}"))
    return f"{meta.get('annotations')}: key {twice!r} is kept in more than one annotation row"


def in_input_order(table: pa.Table) -> pa.Table:
    """Decisions `table` with its rows in their samples' order in the shard, where the member index
    says where each lies (unchanged where they already are, or without an index: the writer then
    walks the tar and refuses a row whose sample is not the next one). A row without an offset (a
    sample that could not be read, the shard breaking) stays after the row it followed."""
    if tarindex.NAMES[0] not in table.column_names:
        return table
    from recaption.io import arrays

    off, has = arrays.ints(table["tar_offset"], -1)
    if not has.any():
        return table
    last = np.maximum.accumulate(np.where(has, np.arange(len(off)), -1))  # the last row with an offset so far
    at = np.where(last >= 0, off[np.maximum(last, 0)], -1)  # a row without one: where the row before it lies
    if np.all(off[has][1:] >= off[has][:-1]):
        return table
    order = np.lexsort((np.arange(len(at)), ~has, at))  # by place, the row with the offset first, then as listed
    return table.take(pa.array(order))


def key_groups(f: AnnFile, cfg: MixConfig) -> list[str]:
    """The named caption groups an annotation file holds, whose keys `--caption-keys` writes."""
    from recaption.annotators.groups import in_file

    if cfg.caption_keys == "none":
        return []
    return sorted(in_file(((ann.read_metadata(f.path) or {}).get("groups") or {})))


def group_keys(t: pa.Table, c: colmod.Columns, groups: list[str], synthetic_group: str | None, level: str):
    """The `caption_groups` column of one file's decisions: each named group's best candidate
    (and with `all` every candidate), the synthetic group's being the synthetic caption; with
    `sentences`, the sentences of those longer than the CLIP context."""
    sentences = caption_keys.needs_sentences(level)
    parts = []
    for g in groups:
        if g == synthetic_group:
            caps, idx, tokens = t["captions"], c.syn_idx, "clip_captions_tokens"
        else:
            caps = t[colmod.stored_name("captions", g)]
            idx = colmod.synthetic(caps, t[colmod.stored_name("clip_captions", g)])[1]
            tokens = colmod.stored_name("clip_captions_tokens", g)
        long = longer_than_context(t[tokens], caps, idx, t["clip_context"]) if sentences else None
        parts.append((g, colmod.synthetic_text(caps, idx), caps, long))
    synthetic = None
    if sentences:
        synthetic = (colmod.synthetic_text(t["captions"], c.syn_idx),
                     longer_than_context(t["clip_captions_tokens"], t["captions"], c.syn_idx, t["clip_context"]))
    return caption_keys.group_column(t.num_rows, parts, level, synthetic)


def longer_than_context(tokens, captions, idx: np.ndarray, context) -> np.ndarray:
    """Per row: whether candidate `idx` is longer than the CLIP context, by the `length` group's
    counts (False where it has none, or they do not pair one to one with the candidates)."""
    def lens(col):
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        return pc.fill_null(pc.list_value_length(col), -1).to_numpy(zero_copy_only=False)

    ok = (lens(tokens) == lens(captions)) & (np.asarray(idx) >= 0)
    n = colmod.synthetic_text(tokens, np.where(ok, idx, -1)).cast(pa.int64())
    ctx = pc.fill_null(context.combine_chunks().cast(pa.int64()), np.iinfo(np.int64).max)
    return ok & pc.fill_null(pc.greater(n, ctx), False).to_numpy(zero_copy_only=False)


def check_lengths(f: AnnFile, keyed: list[str]) -> None:
    """`--caption-keys sentences` reads the `length` group of the synthetic and keyed groups: a
    file without it is one line naming it and the group."""
    held = (ann.read_metadata(f.path) or {}).get("groups") or {}
    for g in dict.fromkeys([*(colmod.group_names(f.group) or (None,)), *keyed]):
        need = "length" if g is None else f"length.{g}"
        if need not in held or "length" not in held:
            raise RecaptionError(f"{f.path} has no CLIP token counts ({need}) for --caption-keys sentences; add "
                                 "them with `recaption score INPUT -a ANN` (the length group)")


def removal_settings(cfg: MixConfig) -> dict:
    """The duplicate and overlap settings a decisions file records (none without them)."""
    out = {}
    if cfg.dedup:
        out["dedup"], out["dedup_keep"] = cfg.dedup, cfg.dedup_keep
    if cfg.decontaminate:
        out["decontaminate"], out["decontaminate_rules"] = cfg.decontaminate, cfg.decontaminate_rules
    return out


def read_meta(path: str) -> dict:
    """The `recaption.decisions` metadata of a decisions file."""
    return json.loads(ann.read_table(path, columns=[]).schema.metadata[META_KEY])


# -- output shards ---------------------------------------------------------------------------
@dataclass
class Part:
    """A slice of one input shard's kept samples that goes into an output shard."""

    url: str
    decisions: str
    start: int  # slice of this shard's kept samples
    end: int
    digest: str = ""  # the decisions file's, when planned (`provenance.built_from`)


@dataclass
class OutputPlan:
    """One output shard: its name and the slices of input shards it holds, fixed before writing."""

    name: str
    parts: list[Part]
    strategy: str
    out_dir: str
    caption_keys: str = "none"  # the mix's --caption-keys


def assign(kept: list[tuple], cfg: MixConfig, out_dir: str) -> list[OutputPlan]:
    """Output shards from (name, url, decisions, kept count[, decisions digest]) per input shard,
    in input order: runs of `samples_per_shard` kept samples, or one output shard per input shard."""
    common = dict(strategy=cfg.strategy, out_dir=out_dir, caption_keys=cfg.caption_keys)
    kept = [(*x, "")[:5] for x in kept]
    if cfg.keep_sharding:
        return [OutputPlan(n, [Part(u, d, 0, k, g)], **common) for n, u, d, k, g in kept]
    plans, cur, room, idx = [], [], cfg.samples_per_shard, 0
    for _, u, d, k, g in kept:
        start = 0
        while start < k:
            take = min(room, k - start)
            cur.append(Part(u, d, start, start + take, g))
            start += take
            room -= take
            if room == 0:
                plans.append(OutputPlan(f"{idx:05d}", cur, **common))
                cur, room, idx = [], cfg.samples_per_shard, idx + 1
    if cur:
        plans.append(OutputPlan(f"{idx:05d}", cur, **common))
    return plans


def plan(pool: Pool, cfg: MixConfig, out_dir: str) -> tuple[list[OutputPlan], dict]:
    """Write every decisions file (mapped like the pool pass), then `_dropped.parquet` from them,
    in input order; returns the output shard plans and the counts."""
    if cfg.caption_keys != "none":
        caption_keys.check_captioners(pool.captioners)
    makedirs(join(out_dir, FOLDER))
    total, kept, lost, repeated = Outcomes(), [], 0, []
    removal = pool.source.removal
    files = removal.with_reasons(pool.source.files) if removal is not None else None
    for fp in pool.source.map(plan_file, cfg, pool.numbers, out_dir, files=files):
        total.add(Outcomes(np.array(fp.codes, dtype=np.int64), groups=fp.groups or {}))
        kept.append((fp.name, fp.url, fp.decisions, fp.kept, fp.digest))
        lost += fp.unannotated
        if fp.repeated:
            repeated.append({"shard": fp.name, "error": fp.repeated, "kept": fp.kept})
    write_dropped(out_dir, [(n, d) for n, _, d, _, _ in kept])
    counts = mix_counts(pool, total)
    # what the summary records of every decisions file, in input order (the drops file's order)
    counts["decisions"] = {n: g for n, _, _, _, g in kept}
    counts["repeated"] = repeated
    if lost:  # read from the tars, not from the annotation rows the pool pass counted
        counts["read"] += lost
        counts["dropped"] = dict(sorted({**counts["dropped"], provenance.NO_ROW: lost}.items(),
                                        key=lambda kv: (-kv[1], kv[0])))
    return assign(kept, cfg, out_dir), counts


def check_shards(pool: Pool) -> None:
    """Every input shard is the one its annotation file was made from (`provenance.check_shard`),
    checked before a mix writes anything; mapped like the pool pass."""
    for _ in pool.source.map(provenance.check_shard):
        pass


def check_json_tags(pool: Pool, cfg: MixConfig) -> None:
    """Every annotation file holds the groups of the `--json-tags` columns (one line naming the
    file, the missing tag and the tags it holds otherwise), before anything is written."""
    if not cfg.json_tags:
        return
    from recaption import annotators

    group_of = {c.name: a.name for a in annotators.classes() for c in a.columns}
    for f in pool.source.files:
        held = set(((ann.read_metadata(f.path) or {}).get("groups") or {}))
        missing = next((t for t in cfg.json_tags if group_of[t] not in held), None)
        if missing is not None:
            have = [t for t in annotators.tag_columns() if group_of[t] in held]
            hint = annotators.group_hint(group_of[missing])
            raise RecaptionError(f"--json-tags {missing}: annotation file {f.path} has no {missing} (its tags: "
                                 f"{', '.join(have) or 'none'}); add it with `{hint}`")


def write_dropped(out_dir: str, files: list[tuple[str, str]]) -> None:
    """`_dropped.parquet` (key, shard, reason), one row group per input shard with drops."""
    with atomic_open(join(out_dir, "_dropped.parquet")) as f:
        with pq.ParquetWriter(f, DROPPED_SCHEMA) as w:
            for name, path in files:
                t = ann.read_table(path, columns=["key", "kept", "reason"])
                t = t.filter(pc.invert(t["kept"]))
                if t.num_rows:
                    shard = pa.array([name], pa.string()).take(pa.array(np.zeros(t.num_rows, np.int32)))
                    w.write_table(pa.table([t["key"], shard, t["reason"]], schema=DROPPED_SCHEMA))


def plan_dict(p: OutputPlan) -> dict:
    """The plan as a plain dict, the form work items cross process and Ray boundaries in."""
    return asdict(p)
