"""Gather what a report shows from any folder recaption writes, file by file: histograms on fixed
bins, the filter metrics' distributions, a few sample picks per file (merged), and every strategy
side by side from the pool pass a mix uses. Nothing grows with the pool but the bin counts."""
from __future__ import annotations

import dataclasses
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaption import annotators
from recaption.io import annotations as ann
from recaption.errors import RecaptionError
from recaption.mixing import columns
from recaption.mixing.compare import side_by_side, variant_name
from recaption.mixing.files import AnnFile
from recaption.mixing.filters import FilterSet, aspect, sides
from recaption.mixing.plan import decisions_path
from recaption.mixing.pool import PoolSource
from recaption.mixing.strategies import MixConfig, blend_of
from recaption.report.folder import Folder, resolve

K = 6  # cards per sample grid
OVERLAPS = 48  # evaluation overlaps shown side by side
# Fixed bins, so per-file counts add up: (low, high, width); the last bin also takes what is above.
# (the annotators declare more: `recaption.annotators.base.Hist`, e.g. the metrics' chars and kb)
BINS = {
    "clip": (-1.0, 1.0, 0.01), "sieve": (-1.0, 1.0, 0.01), "blend": (0.0, 1.0, 0.005),
    "words": (0, 60, 1), "side": (0, 2000, 25), "aspect": (1.0, 6.0, 0.1),
    "tokens": (0, 300, 4),  # CLIP tokens of each caption (the length group)
}


def _declared() -> dict:
    """The histograms the registered annotators declare, by name (`recaption.annotators.base.Hist`)."""
    from recaption import annotators

    return {h.name: h for a in annotators.classes() for h in a.hists}


def _edges(name: str) -> np.ndarray:
    lo, hi, w = BINS[name] if name in BINS else _declared()[name].bins
    return np.linspace(lo, hi, int(round((hi - lo) / w)) + 1)


def _hist(name: str, x: np.ndarray) -> np.ndarray:
    e = _edges(name)
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    idx = np.clip(np.searchsorted(e, x, side="right") - 1, 0, len(e) - 2)
    return np.bincount(idx, minlength=len(e) - 1).astype(np.int64)


@dataclass
class ReportData:
    """Everything a report page shows, already counted."""
    source: str
    kind: str  # annotations | mix | run
    summary: dict | None = None
    rows: int = 0  # sample rows
    valid: int = 0  # annotated without error
    pooled: int = 0  # passed the filters: what the strategies and thresholds see
    cfg: MixConfig | None = None  # the settings the strategy bars use
    thresholds: dict = field(default_factory=dict)  # column -> threshold line
    filters: list = field(default_factory=list)  # per rule: {rule, dropped, lacking, alone}
    per_strategy: list = field(default_factory=list)  # side_by_side rows
    own: str | None = None  # the folder's own strategy (output folders)
    hists: dict = field(default_factory=dict)  # name -> {series: counts}
    langs: Counter = field(default_factory=Counter)
    grids: dict = field(default_factory=dict)  # title -> cards (dicts)
    images: dict = field(default_factory=dict)  # (shard, key) -> image bytes (the grids' cards and overlaps)
    shown_of: dict = field(default_factory=dict)  # grid title -> how many samples it picked from
    blurred: set = field(default_factory=set)  # the grids of the highest NSFW scores: thumbnails blurred
    unsafe: set = field(default_factory=set)  # (shard, key) of other shown samples scoring >= BLUR_AT: blurred too
    unblur: bool = False  # show them sharp (report --unblur)
    notes: list = field(default_factory=list)
    # {shard, key, eval, reason}: a pool sample and the EVAL image it copies
    overlaps: list = field(default_factory=list)
    overlaps_total: int = 0  # all the folder's overlaps (the page shows the first OVERLAPS)
    eval_images: dict = field(default_factory=dict)  # EVAL image name -> bytes
    # caption group ("" the unnamed one) -> {captioners, samples, words, clip, sieve}: sums and counts
    groups: dict = field(default_factory=dict)
    # "alt-text", "" (the unnamed group's candidates) or a group -> {n, tokens, truncated, context}: CLIP token sums
    lengths: dict = field(default_factory=dict)
    ann_dir: str | None = None  # where the annotation files were read
    input: str | None = None  # the input shards, where known and reachable

    def edges(self, name: str) -> np.ndarray:
        """The fixed bin edges of a histogram."""
        return _edges(name)


def load(path: str | Path, input_spec: str | None = None, fraction: float | None = None, alpha: float | None = None,
         annotations: str | None = None, filters=None, unblur: bool = False) -> ReportData:
    """Everything a report shows of `path`. `fraction` (default: the folder's own, else 0.3) sets
    the strategy bars; `filters` (annotation folders) previews rules; output folders use theirs;
    `unblur` shows the grids of the highest NSFW scores sharp (refused where there are none)."""
    f = resolve(path, annotations, input_spec)
    cfg = _bars_config(f, fraction, alpha, filters)
    fs = cfg.filter_set
    source = PoolSource.of_folder(str(f.ann_dir), f.names, filters=fs)
    if cfg.synthetic_group:  # a mix of a named caption group: its synthetic captions, as the mix read them
        source.files = [dataclasses.replace(a, group=cfg.synthetic_group) for a in source.files]
    if f.output:  # the duplicates and overlaps the mix removed, as its decisions say: out of the pool
        source.files = [dataclasses.replace(a, removed=_removed(f, a.name)) for a in source.files]
    pool = source.stats()
    d = ReportData(str(f.path), f.kind, f.summary, pool.n_rows, pool.n_rows - pool.errors, cfg=cfg,
                   filters=pool.filters, ann_dir=str(f.ann_dir), input=f.input)
    own = variant_name(f.cfg.strategy, f.cfg.filter_synthetic) if f.cfg else None
    same = f.cfg is not None and cfg.fraction == f.cfg.fraction and cfg.threshold == f.cfg.threshold
    fixed = {own: f.summary["threshold"]} if same and f.summary and f.summary.get("threshold") is not None else None
    d.own = own
    d.per_strategy = side_by_side(source, cfg, pool, fixed=fixed)
    for r in d.per_strategy:
        if r.get("threshold") is not None and (r["strategy"] == own or r["threshold_column"] not in d.thresholds):
            d.thresholds[r["threshold_column"]] = r["threshold"]
    parts = list(source.map(report_part, pool.numbers, cfg.alpha, fs))
    for p in parts:
        for g, s in p["groups"].items():
            cur = d.groups.setdefault(g, {"captioners": set(), **{k: 0.0 for k in GROUP_SUMS}})
            cur["captioners"] |= set(s.pop("captioners"))
            for why, n in s.pop("fusion", {}).items():  # a chained group: rows sent, by clause, and why not
                cur.setdefault("fusion", {})[why] = cur.get("fusion", {}).get(why, 0) + n
            for k, v in s.items():
                cur[k] += v
        for g, s in p["lengths"].items():
            cur = d.lengths.setdefault(g, {"n": 0, "tokens": 0, "truncated": 0, "context": 0})
            cur.update(n=cur["n"] + s["n"], tokens=cur["tokens"] + s["tokens"],
                       truncated=cur["truncated"] + s["truncated"], context=max(cur["context"], s["context"]))
        d.pooled += p["pooled"]
        d.langs.update(p["langs"])
        for name, series in p["hists"].items():
            for s, counts in series.items():
                cur = d.hists.setdefault(name, {}).get(s)
                d.hists[name][s] = counts if cur is None else cur + counts
    d.hists = {n: {s: c for s, c in ser.items() if c.any()} for n, ser in d.hists.items()}
    d.hists = {n: ser for n, ser in d.hists.items() if ser}
    grids, d.shown_of = _decision_grids(f, fs) if f.output else ({}, {})
    d.grids = {t: cards for t, cards in grids.items() if cards}
    if f.output and f.cfg is not None and f.cfg.decontaminate:
        _overlaps(d, f)
    if not d.grids:  # an annotation folder, or an output folder without decisions files
        grids, d.shown_of = _score_grids(parts)
        d.grids = {t: cards for t, cards in grids.items() if cards}
    _sensitive_grids(d, parts)
    if d.blurred:
        _unsafe_cards(d, f)
    if unblur and not d.blurred:  # a shown option changes what happens, or is refused
        raise RecaptionError(f"--unblur: {path} has no NSFW scores ({', '.join(annotators.sensitive_columns())}), "
                             "so nothing is blurred")
    d.unblur = unblur
    _pick_images(d, f)
    if not d.images and not f.input and not f.output:
        d.notes.append("give --input SHARDS to see the images of the samples")
    return d


def _removed(f: Folder, name: str):
    from recaption.mixing.removal import from_decisions

    path = decisions_path(str(f.path), name)
    return from_decisions(path) if Path(path).is_file() else None


def _overlaps(d: ReportData, f: Folder) -> None:
    """The folder's evaluation overlaps (from its decisions), the first OVERLAPS with both images."""
    from recaption.dedup.overlap import eval_image
    from recaption.mixing.removal import OVERLAP_PREFIX

    for name in f.names:
        path = decisions_path(str(f.path), name)
        if not Path(path).is_file():
            continue
        t = ann.read_table(path, columns=["key", "reason"])
        hit = pc.fill_null(pc.starts_with(pc.fill_null(t["reason"], ""), OVERLAP_PREFIX), False)
        t = t.filter(hit)
        d.overlaps_total += t.num_rows
        for r in t.slice(0, max(0, OVERLAPS - len(d.overlaps))).to_pylist():
            ev = r["reason"][len(OVERLAP_PREFIX):].split(" (", 1)[0]  # EVAL/NAME
            d.overlaps.append({"shard": name, "key": r["key"], "eval": ev, "reason": r["reason"]})
    root = f.cfg.decontaminate
    for o in d.overlaps:
        inside = o["eval"].split("/", 1)[1] if "/" in o["eval"] else o["eval"]
        if o["eval"] not in d.eval_images:
            try:
                data = eval_image(root, inside)
            except Exception:  # EVAL moved or unreadable here: the pair shows its pool side only
                data = None
            if data is not None:
                d.eval_images[o["eval"]] = data
    if d.overlaps and not d.eval_images:
        d.notes.append(f"the evaluation set {root} is not readable from here; overlaps show the pool images only")


def _bars_config(f: Folder, fraction, alpha, filters) -> MixConfig:
    """Every strategy at the folder's own threshold or fraction (or the one asked for)."""
    if f.cfg is not None and filters:  # shown, and would change nothing: the folder's own rules are its mix's
        raise RecaptionError(f"--filter previews rules on an annotation folder; {f.path} is a {f.kind} folder, "
                             "whose report shows the rules it was mixed with")
    if f.cfg is not None:
        base = f.cfg
        if fraction is not None:
            base = MixConfig(base.strategy, fraction=fraction, filter_synthetic=base.filter_synthetic,
                             alpha=base.alpha, filters=base.filters, synthetic_group=base.synthetic_group)
        elif base.threshold is None and base.fraction is None:
            base = MixConfig(base.strategy, fraction=0.3, filter_synthetic=base.filter_synthetic, alpha=base.alpha,
                             filters=base.filters, synthetic_group=base.synthetic_group)
        if alpha is not None:
            base = MixConfig(**{**base.__dict__, "alpha": alpha})
        return base.validate()
    return MixConfig("threshold", fraction=0.3 if fraction is None else fraction,
                     alpha=0.5 if alpha is None else alpha, filters=filters or {}).validate()


# -- one annotation file -----------------------------------------------------------------------
def report_part(f: AnnFile, numbers, alpha: float, filters: FilterSet, cache=None) -> dict:
    """Histograms, language counts and a few picks of one annotation file."""
    meta = ann.read_metadata(f.path) or {}
    held = (meta.get("groups") or {})
    has_metrics = "metrics" in held
    declared = [h for h in _declared().values()
                if any(h.column in annotators.group_columns(g) for g in held if g in annotators.names())]
    cols = columns.columns_for(True, text=True, filters=filters) + ["shard"]
    if has_metrics:
        cols += [c for c in annotators.group_columns("metrics") if c not in cols]
    cols += [h.column for h in declared if h.column not in cols]
    sensitive = [c for c in annotators.sensitive_columns()
                 if any(c in annotators.group_columns(g) for g in held if g in annotators.names())]
    cols += [c for c in sensitive if c not in cols]
    t = columns.read(f.path, list(dict.fromkeys(cols)), filters=filters, group=f.group)
    c = columns.from_table(t, filters, f.removed)
    valid, pool = c.valid, c.pool
    syn = columns.synthetic_text(t["captions"], c.syn_idx)
    blend = blend_of(c, numbers, alpha)
    hists = {
        "clip": {"raw": _hist("clip", c.clip_raw[pool]), "synthetic": _hist("clip", c.clip_syn[pool])},
        "sieve": {"sieve": _hist("sieve", c.sieve[pool])},
        "blend": {"blend": _hist("blend", blend[pool])},
        "words": {"raw": _hist("words", _words(t["raw_caption"])[pool]),
                  "synthetic": _hist("words", _words(syn)[pool])},
    }
    langs: Counter = Counter()
    if has_metrics:  # the filter metrics, over every annotated sample: what the rules cut from
        lo, hi, known = sides(t)
        hists["side"] = {"shorter side": _hist("side", lo[valid & known])}
        hists["aspect"] = {"aspect": _hist("aspect", aspect(lo, hi)[valid & known])}
        for vc in pc.value_counts(t["lang"].filter(pa.array(valid))).to_pylist():
            if vc["values"] is not None:
                langs[vc["values"]] += vc["counts"]
    for h in declared:  # each annotator's own histograms, over every annotated sample
        hists[h.name] = {h.label or h.column: _hist(h.name, _num(t[h.column])[valid] / h.scale)}
    lengths, hists["tokens"] = caption_lengths(f, held, valid)
    return {"pooled": int(pool.sum()), "hists": hists, "langs": langs, "lengths": lengths,
            "picks": _score_picks(f.name, t, c, syn, blend, pool), "groups": caption_groups(f, held, valid),
            "sensitive": _sensitive_picks(t, c, syn, blend, valid, sensitive)}


def length_label(source: str) -> str:
    """How the report names a source of captions in the length histogram and table."""
    return source if source == "alt-text" else "candidates" + (f": {source}" if source else "")


def caption_lengths(f: AnnFile, held: dict, valid: np.ndarray) -> tuple[dict, dict]:
    """CLIP token counts of the alt-text and of every caption group's candidates over the valid
    rows, where the file holds their `length` group: sums ({n, tokens, truncated, context}) and
    histograms, by source."""
    from recaption.annotators.groups import column, in_file

    if "length" not in held:
        return {}, {}
    names = [""] + [g for g in in_file(held) if f"length.{g}" in held]
    want = ["clip_context", "clip_raw_tokens"] + [column("clip_captions_tokens", g or None) for g in names]
    t = ann.read_table(f.path, columns=want, threads=False)
    context = _num(t["clip_context"])
    sums, hists = {}, {}
    for source in ["alt-text", *names]:
        if source == "alt-text":
            n, ctx = _num(t["clip_raw_tokens"]), context
            n, ctx = n[valid], ctx[valid]
        else:
            lists = t[column("clip_captions_tokens", source or None)].combine_chunks().filter(pa.array(valid))
            n = _num(pc.list_flatten(lists))
            ctx = np.repeat(context[valid], pc.fill_null(pc.list_value_length(lists), 0).to_numpy(
                zero_copy_only=False))
        ok = np.isfinite(n)
        if source and not ok.any():
            continue
        sums[source] = {"n": int(ok.sum()), "tokens": int(n[ok].sum()), "truncated": int((n[ok] > ctx[ok]).sum()),
                        "context": int(np.nanmax(ctx[ok])) if ok.any() else 0}
        hists[length_label(source)] = _hist("tokens", n[ok])
    return sums, hists


GROUP_SUMS = ("samples", "words", "words_n", "clip", "clip_n", "sieve", "sieve_n")


def caption_groups(f: AnnFile, held: dict, valid: np.ndarray) -> dict:
    """Per caption group the file holds ("" the unnamed one): its captioners and, over the valid
    rows with candidates, sums and counts of the best candidate's words and CLIP score and of SIEVE."""
    from recaption.annotators.groups import column, in_file

    names = ([""] if "captions" in held else []) + in_file(held)
    if not names:
        return {}
    want = [column(c, g or None) for g in names for c in ("captions", "captioner", "clip_captions", "sieve", "fusion")]
    t = ann.read_table(f.path, columns=want, threads=False)
    out = {}
    for g in names:
        cols = {c: column(c, g or None) for c in ("captions", "captioner", "clip_captions", "sieve")}
        if cols["captions"] not in t.column_names:
            continue
        has, idx, best = columns.synthetic(t[cols["captions"]], t[cols["clip_captions"]])
        rows = valid & has
        words = _words(columns.synthetic_text(t[cols["captions"]], idx))[rows]
        sieve = _num(t[cols["sieve"]])[rows] if cols["sieve"] in t.column_names else np.array([])
        best = np.asarray(best, np.float64)[rows]
        who = pc.unique(t[cols["captioner"]].filter(pa.array(rows))).to_pylist()
        out[g] = {"captioners": [x for x in who if x], "samples": float(rows.sum()),
                  "words": float(np.nansum(words)), "words_n": float(np.isfinite(words).sum()),
                  "clip": float(np.nansum(best)), "clip_n": float(np.isfinite(best).sum()),
                  "sieve": float(np.nansum(sieve)), "sieve_n": float(np.isfinite(sieve).sum())}
        if column("fusion", g or None) in t.column_names:  # a chained group: which clause sent each row
            counts = pc.value_counts(t[column("fusion", g or None)].combine_chunks()).to_pylist()
            out[g]["fusion"] = {c["values"]: c["counts"] for c in counts if c["values"] is not None}
    return out


def _num(col) -> np.ndarray:
    a = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.cast(a, pa.float64()).to_numpy(zero_copy_only=False)


def _words(text) -> np.ndarray:
    """Whitespace-separated words per row (NaN where there is no text), as str.split() counts."""
    a = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    parts = pc.utf8_split_whitespace(a)
    flat = pc.list_flatten(parts)
    parent = pc.list_parent_indices(parts).to_numpy(zero_copy_only=False)
    nonempty = pc.greater(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False)
    n = np.bincount(parent[nonempty], minlength=len(a)).astype(np.float64)
    return np.where(a.is_valid().to_numpy(zero_copy_only=False), n, np.nan)


def _card(t: pa.Table, i: np.ndarray, extra: dict) -> list[dict]:
    if not len(i):
        return []
    rows = t.take(pa.array(i)).to_pylist()
    return [{**r, **{k: v[j] for k, v in extra.items()}} for j, r in enumerate(rows)]


def _f(x: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, dtype=np.float64)]


def _score_picks(name: str, t, c, syn, blend, pool) -> dict:
    """This file's highest and lowest CLIP (raw) and a seeded random few (global picks come from these)."""
    base = pa.table({"key": t["key"], "shard": t["shard"], "raw": t["raw_caption"], "synthetic": syn})
    rows = np.flatnonzero(pool)
    scored = rows[np.isfinite(c.clip_raw[rows])]
    order = scored[np.argsort(c.clip_raw[scored], kind="stable")]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    rand = rng.random(len(rows))
    take = rows[np.argsort(rand, kind="stable")[:K]]

    def cards(i, rank=None):
        extra = {"clip_raw": _f(c.clip_raw[i]), "clip_syn": _f(c.clip_syn[i]), "sieve": _f(c.sieve[i]),
                 "blend": _f(blend[i]), "rank": rank if rank is not None else [None] * len(i)}
        return _card(base, i, extra)

    return {"high": cards(order[::-1][:K]), "low": cards(order[:K]),
            "random": cards(take, sorted(rand)[:K]), "scored": len(scored), "pooled": len(rows)}


def _sensitive_picks(t, c, syn, blend, valid, cols: list[str]) -> dict:
    """Per NSFW column, this file's highest-scoring annotated samples (the pool's filters aside: a
    max-punsafe rule drops exactly these) and how many were scored."""
    base = pa.table({"key": t["key"], "shard": t["shard"], "raw": t["raw_caption"], "synthetic": syn})
    out = {}
    for col in cols:
        x = _num(t[col])
        rows = np.flatnonzero(valid & np.isfinite(x))
        top = rows[np.argsort(-x[rows], kind="stable")[:K]]
        extra = {"clip_raw": _f(c.clip_raw[top]), "clip_syn": _f(c.clip_syn[top]), "sieve": _f(c.sieve[top]),
                 "blend": _f(blend[top]), "tag": [col] * len(top), "tag_value": _f(x[top])}
        out[col] = {"cards": _card(base, top, extra), "scored": len(rows)}
    return out


def sensitive_title(col: str) -> str:
    """The title of the grid of a NSFW column's highest samples."""
    return f"highest {col}"


def _sensitive_grids(d: ReportData, parts: list[dict]) -> None:
    """The grids of the highest NSFW scores over the folder, after the others, marked blurred."""
    for col in dict.fromkeys(col for p in parts for col in p["sensitive"]):
        cards = sorted((r for p in parts for r in p["sensitive"].get(col, {}).get("cards", [])),
                       key=lambda r: -r["tag_value"])[:K]
        if cards:
            title = sensitive_title(col)
            d.grids[title] = cards
            d.shown_of[title] = sum(p["sensitive"].get(col, {}).get("scored", 0) for p in parts)
            d.blurred.add(title)


BLUR_AT = 0.5  # an NSFW probability from which a sample shown in any grid is blurred (LAION's punsafe cut)


def _unsafe_cards(d: ReportData, f: Folder) -> None:
    """The samples of the other grids and the overlaps whose NSFW score is BLUR_AT or more (read
    from their annotation files, one read of the key and NSFW columns per shard shown)."""
    shown = {(r.get("shard"), r["key"]) for t, cards in d.grids.items() if t not in d.blurred for r in cards}
    shown |= {(o["shard"], o["key"]) for o in d.overlaps}
    by_shard: dict = {}
    for shard, key in shown:
        by_shard.setdefault(shard, set()).add(key)
    for shard, keys in by_shard.items():
        path = Path(f.ann_dir) / f"{shard}.parquet"
        if shard is None or not path.is_file():
            continue
        with ann.open_parquet(str(path)) as pf:
            names = set(pf.schema_arrow.names)
        cols = [c for c in annotators.sensitive_columns() if c in names]
        if not cols:
            continue
        t = ann.read_table(str(path), columns=["key", *cols])
        score = np.fmax.reduce([np.nan_to_num(_num(t[c]), nan=-1.0) for c in cols], axis=0)
        hit = score >= BLUR_AT
        d.unsafe |= {(shard, k) for k in pc.filter(t["key"], pa.array(hit)).to_pylist() if k in keys}


def _score_grids(parts: list[dict]) -> tuple[dict, dict]:
    """The grids of an annotation folder, and how many samples each picked from."""
    high = sorted((x for p in parts for x in p["picks"]["high"]), key=lambda r: -r["clip_raw"])[:K]
    low = sorted((x for p in parts for x in p["picks"]["low"]), key=lambda r: r["clip_raw"])[:K]
    rand = sorted((x for p in parts for x in p["picks"]["random"]), key=lambda r: r["rank"])[:K]
    scored = sum(p["picks"]["scored"] for p in parts)
    pooled = sum(p["picks"]["pooled"] for p in parts)
    return ({"highest CLIP (raw)": high, "lowest CLIP (raw)": low, "random": rand},
            {"highest CLIP (raw)": scored, "lowest CLIP (raw)": scored, "random": pooled})


# -- an output folder's decisions --------------------------------------------------------------
DECIDED = ["key", "kept", "reason", "caption_source", "caption", "raw_caption", "synthetic_caption", "clip_raw",
           "clip_synthetic", "sieve", "blend"]


def _decision_grids(f: Folder, filters: FilterSet) -> tuple[dict, dict]:
    """A seeded random few written with each caption source, and dropped (each with its reason);
    and how many samples each grid picked from."""
    groups = {"written with the alt-text": [], "written with the synthetic caption": [], "dropped": []}
    totals = dict.fromkeys(groups, 0)
    for name in f.names:
        path = decisions_path(str(f.path), name)
        if not Path(path).is_file():
            continue
        t = ann.read_table(path, columns=DECIDED)
        kept = pc.fill_null(t["kept"], False).to_numpy(zero_copy_only=False)
        src = pc.fill_null(t["caption_source"], "").to_numpy(zero_copy_only=False)
        keyed = t["key"].is_valid().to_numpy(zero_copy_only=False)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        rand = rng.random(t.num_rows)
        for title, where in (("written with the alt-text", kept & (src == "raw")),
                             ("written with the synthetic caption", kept & (src == "synthetic")),
                             ("dropped", ~kept & keyed)):
            i = np.flatnonzero(where)
            totals[title] += len(i)
            i = i[np.argsort(rand[i], kind="stable")[:K]]
            sub = t.take(pa.array(i))
            for j, r in enumerate(sub.to_pylist()):
                groups[title].append({"key": r["key"], "shard": name, "raw": r["raw_caption"],
                                      "synthetic": r["synthetic_caption"], "clip_raw": r["clip_raw"],
                                      "clip_syn": r["clip_synthetic"], "sieve": r["sieve"], "blend": r["blend"],
                                      "written": r["caption"], "source": r["caption_source"], "reason": r["reason"],
                                      "kept": r["kept"], "rank": float(rand[i[j]])})
    return {k: sorted(v, key=lambda r: r["rank"])[:K] for k, v in groups.items()}, totals


# -- images for the cards ----------------------------------------------------------------------
def _pick_images(d: ReportData, f: Folder) -> None:
    """Image bytes of the cards' samples, by (shard, key): from the folder's own tars (kept
    samples, each with its input shard in the tar's parquet), else from the input shards the cards
    came from; only the shards that hold a card are read."""
    from recaption.io.shards import iter_shard
    from recaption.io.sources import list_shards, shard_name

    want = {(r["shard"], r["key"]) for cards in d.grids.values() for r in cards}
    want |= {(o["shard"], o["key"]) for o in d.overlaps}
    if f.output:
        for out in sorted(f.path.glob("*.parquet")):
            if not want - d.images.keys():
                break
            if not (f.path / f"{out.stem}.tar").is_file() or out.name.startswith("_"):
                continue
            t = ann.read_table(str(out), columns=["key", "source_shard"])
            sources = list(zip(t["source_shard"].to_pylist(), t["key"].to_pylist()))
            if set(sources) & (want - d.images.keys()):
                _read_images(d, iter_shard(str(f.path / f"{out.stem}.tar")), want, sources)
    left = {s for s, k in want if (s, k) not in d.images}
    if left and f.input:
        try:
            urls = [u for u in list_shards(f.input) if shard_name(u) in left]
        except Exception as e:  # the input moved: cards without images, said on the page
            d.notes.append(f"input shards not readable ({type(e).__name__}); cards show no images")
            return
        for u in urls:
            _read_images(d, iter_shard(u), want, shard=shard_name(u))


def _read_images(d: ReportData, samples, want: set, sources: list | None = None, shard: str | None = None) -> None:
    """Keep the wanted images of one tar; its samples' input shard is `shard`, or, for an output
    tar, the (source shard, key) its parquet lists in the same order."""
    for i, rec in enumerate(samples):
        src = shard if sources is None else (sources[i][0] if i < len(sources) and sources[i][1] == rec.key else None)
        if (src, rec.key) in want and hasattr(rec, "members") and rec.image_field:
            d.images[(src, rec.key)] = rec.image_bytes
