"""Rows a mix removes before its strategy for what they are, not for what they score: copies of an
evaluation image (`--decontaminate`) and duplicates of another pool sample (`--dedup`)
(docs/formats.md#duplicates-and-evaluation-overlap).

Found once per pool, after the filter rules and before the pool's statistics:

1. per annotation file (threads or Ray tasks, `PoolSource.map`), `file_keys` takes the rows still
   in the pool (ok, through the filters), settles there the rows that overlap EVAL (the set is
   small and goes to every file; `recaption.dedup.overlap`), and hands the fingerprints of the
   others to the driver (`recaption.dedup.duplicates.FileKeys`, about 40 bytes a row);
2. on the driver, `Duplicates` runs the duplicate rules over the whole pool, across files;
3. what is removed then travels with each file (`Removed`: its rows and their outcome code,
   `OVERLAP` or `DUPLICATE`), so every later pass (statistics, fraction thresholds, counts,
   decisions) sees the same pool. Reasons, `overlaps EVAL/NAME (rule, value)` and
   `duplicate of SHARD/KEY (rule, value)`, are made for the decisions files only
   (`Removal.with_reasons`).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io import arrays, embeddings
from recaption.mixing import columns as colmod
from recaption.dedup import duplicates
from recaption.dedup import options as dedup_options
from recaption.dedup import overlap
from recaption.dedup.duplicates import RULE_NAMES, DedupConfig, DedupResult, Duplicates
from recaption.mixing.files import AnnFile
from recaption.dedup.overlap import EvalSet, OverlapConfig
from recaption.mixing.strategies.base import DUPLICATE, OVERLAP

DUPLICATE_PREFIX, OVERLAP_PREFIX = "duplicate of ", "overlaps "  # how their reasons start
CATEGORY = {DUPLICATE_PREFIX: "duplicate", OVERLAP_PREFIX: "overlap"}  # and their summary categories


def categories_of(reasons) -> pa.Array:
    """The summary category of each duplicate's and overlap's drop reason (`duplicate of SHARD/KEY
    (phash, 2)`: `duplicate: phash`), null for any other reason; column-wise, as verify counts them."""
    keys = {(start, name): duplicates.category(code, prefix) for start, prefix in CATEGORY.items()
            for code, name in RULE_NAMES.items()}
    starts = "|".join(re.escape(p) for p in CATEGORY)
    rules = "|".join(re.escape(n) for n in RULE_NAMES.values())
    # the last " (" that opens `RULE, VALUE)`: a partner's name may hold one too
    parts = pc.extract_regex(reasons, rf"(?s)^(?P<start>{starts}).* \((?P<rule>{rules}), [^,()]*\)$")
    key = pc.binary_join_element_wise(pc.struct_field(parts, "start"), pc.struct_field(parts, "rule"), "\0")
    at = pc.index_in(key, value_set=pa.array(["\0".join(k) for k in keys]))
    return pa.array(list(keys.values()), pa.string()).take(at)


@dataclass
class Removed:
    """One file's removed rows: row numbers (increasing) and outcome codes; the reasons (a string
    array aligned with `rows`) only where decisions are written."""

    rows: np.ndarray
    code: np.ndarray
    reasons: object = None

    def __len__(self):
        return len(self.rows)


@dataclass
class Removal:
    """What the duplicate and overlap rules removed from a pool, per file, and what a summary shows."""

    files: dict[int, Removed] = field(default_factory=dict)  # file index -> its removed rows
    counts: dict[str, int] = field(default_factory=dict)  # summary category ("duplicate: phash") -> rows
    dedup: list[dict] = field(default_factory=list)  # per --dedup rule: rule, dropped, compared
    decontaminate: dict | None = None  # EVAL, its images, unreadable ones, per rule what it dropped
    duplicates: DedupResult = field(default_factory=DedupResult)
    overlaps: dict = field(default_factory=dict)  # file index -> duplicates.FileDrops (partner: the EVAL image)
    eval_set: EvalSet | None = None

    def with_reasons(self, files: list[AnnFile]) -> list[AnnFile]:
        """The files with their removed rows' reasons, for the decisions (partners named by reading
        the key column of the files they are in, once each)."""
        names = duplicates.partner_names(self.duplicates, lambda i: files[i].name, lambda i: _keys(files[i]))
        out = []
        for i, f in enumerate(files):
            r = self.files.get(i)
            if r is None:
                out.append(f)
                continue
            parts = []
            ov = self.overlaps.get(i)
            if ov is not None and len(ov):
                parts.append((ov.rows, overlap.reasons(ov, self.eval_set)))
            d = self.duplicates.file(i)
            if len(d):
                parts.append((d.rows, duplicates.reasons(d, names[i])))
            rows = np.concatenate([p[0] for p in parts])
            text = pa.concat_arrays([arrays.one(p[1]) for p in parts])
            reasons = text.take(pa.array(np.argsort(rows, kind="stable")))
            out.append(dataclasses.replace(f, removed=Removed(r.rows, r.code, reasons)))
        return out


def _keys(f: AnnFile):
    return ann.read_table(f.path, columns=["key"])["key"]


# -- settings ----------------------------------------------------------------------------------
def dedup_config(cfg) -> DedupConfig | None:
    """The duplicate rules of a MixConfig (None: no --dedup)."""
    d = cfg.dedup
    if not d:
        return None
    return DedupConfig(exact="exact" in d, phash_k=d.get("phash") if "phash" in d else None,
                       cosine=d.get("embedding"), score=dedup_options.keep_column(cfg.dedup_keep))


def overlap_config(cfg) -> OverlapConfig | None:
    """The overlap rules of a MixConfig (None: no --decontaminate)."""
    r = cfg.decontaminate_rules
    if not cfg.decontaminate:
        return None
    return OverlapConfig(exact="exact" in r, phash_k=r.get("phash") if "phash" in r else None,
                         cosine=r.get("embedding"))


def fingerprint_columns(dcfg: DedupConfig | None, ocfg: OverlapConfig | None) -> list[str]:
    """The annotation columns the rules read (the `fingerprints` group's, and a survivor's score)."""
    cols = (dcfg.columns() if dcfg else []) + (ocfg.columns() if ocfg else [])
    return list(dict.fromkeys(cols))


# -- 1. per file -------------------------------------------------------------------------------
def file_keys(f: AnnFile, filters, dcfg: DedupConfig | None, ocfg: OverlapConfig | None, ev: EvalSet | None,
              ann_dir: str, cache=None):
    """One file's rows that overlap EVAL, and the keys of its other pool rows for the duplicate
    rules: (duplicates.FileKeys or None, duplicates.FileDrops (partner: the EVAL image) or None)."""
    fp = fingerprint_columns(dcfg, ocfg)
    wanted = colmod.columns_for(False, filters=filters) + [c for c in fp if c not in colmod.BASE]
    t = _read(f, list(dict.fromkeys(wanted)), filters, needs_fingerprints=any(
        c in fp for c in (duplicates.SHA_COLUMN, duplicates.PHASH_COLUMN)))
    c = colmod.from_table(t, filters)
    eligible = c.pool.copy()
    ov = keys = None
    embedding = (dcfg is not None and dcfg.cosine is not None) or (ocfg is not None and ocfg.cosine is not None)
    if embedding:
        check_embeddings(ann_dir, f, t)
    if ocfg is not None:
        vectors = embeddings.read_vectors(ann_dir, f.name) if ocfg.cosine is not None else None
        ov = overlap.overlaps(duplicates.file_keys(t, ocfg, eligible), ev, ocfg, embeddings=vectors)
        eligible[ov.rows] = False  # an overlapping sample takes no part in the duplicate rules
    if dcfg is not None:
        keys = duplicates.file_keys(t, dcfg, eligible)
    return keys, ov


def _read(f: AnnFile, columns: list[str], filters, needs_fingerprints: bool) -> pa.Table:
    def choose(meta, cols):
        held = (meta or {}).get("groups") or {}
        for group in (filters.groups if filters else ()):
            if group not in held:
                raise colmod.missing_metrics_error(f.path, group)
        if needs_fingerprints and "fingerprints" not in held:
            raise colmod.missing_metrics_error(f.path, "fingerprints")
        return cols

    try:
        return ann.read(f.path, columns=columns, threads=False, choose=choose)
    except RecaptionError:
        raise
    except Exception as e:  # a corrupt parquet: name the file, in one line
        raise RecaptionError(f"cannot read annotation file {f.path}: {type(e).__name__}: {e}") from e


def check_embeddings(ann_dir: str, f: AnnFile, t: pa.Table) -> None:
    """A file's embedding files exist and list its rows, in its order; else one line saying how to
    make them."""
    if not embeddings.has(ann_dir, f.name):
        raise RecaptionError(f"{f.path} has no image embeddings beside it ({embeddings.npy_url(ann_dir, f.name)}); "
                             "the embedding rule reads them: annotate with --save-embeddings")
    keys = embeddings.read_metadata(ann_dir, f.name)["key"]
    if len(keys) != t.num_rows or not keys.equals(t["key"]):
        raise RecaptionError(f"the image embeddings of {f.name} do not list the rows of {f.path}; annotate again "
                             "with --save-embeddings --overwrite")


# -- 2. on the driver --------------------------------------------------------------------------
def find(source, cfg, ann_dir: str, tmpdir: str | None = None) -> Removal:
    """Run the overlap and duplicate rules of `cfg` over the pool of `source` (a PoolSource)."""
    dcfg, ocfg = dedup_config(cfg), overlap_config(cfg)
    ev = load_eval(cfg, source, ann_dir) if ocfg is not None else None
    dup = Duplicates(dcfg) if dcfg is not None else None
    out = Removal(eval_set=ev)
    for i, (keys, ov) in enumerate(source.map(file_keys, source.filters, dcfg, ocfg, ev, ann_dir)):
        if dup is not None:
            dup.add(i, keys)
        if ov is not None and len(ov):
            out.overlaps[i] = ov
    if dup is not None:
        files = source.files
        out.duplicates = dup.run(embeddings=lambda i: embeddings.read_vectors(ann_dir, files[i].name), tmpdir=tmpdir)
    for i in sorted(set(out.overlaps) | set(out.duplicates.files)):
        ov, d = out.overlaps.get(i), out.duplicates.file(i)
        rows = np.concatenate([ov.rows if ov is not None else np.zeros(0, np.int32), d.rows]).astype(np.int32)
        code = np.concatenate([np.full(len(rows) - len(d), OVERLAP, np.uint8), np.full(len(d), DUPLICATE, np.uint8)])
        order = np.argsort(rows, kind="stable")
        out.files[i] = Removed(rows[order], code[order])
    _summarise(out, cfg, dcfg, ocfg)
    return out


def _summarise(out: Removal, cfg, dcfg, ocfg) -> None:
    if ocfg is not None:
        per = overlap.counts(list(out.overlaps.values()), ocfg)
        codes = {name: c for c, name in RULE_NAMES.items()}
        out.counts |= {duplicates.category(codes[k], CATEGORY[OVERLAP_PREFIX]): v for k, v in per.items() if v}
        ev = out.eval_set
        out.decontaminate = {
            "eval": cfg.decontaminate, "name": ev.name, "images": len(ev), "unreadable": len(ev.errors),
            "errors": ev.errors[:20], "rules": [_rule_row(r, v, per) for r, v in cfg.decontaminate_rules.items()]}
        if ev.model:
            out.decontaminate["model"] = ev.model
    if dcfg is not None:
        res = out.duplicates
        out.counts |= {duplicates.category(code, CATEGORY[DUPLICATE_PREFIX]): res.counts.get(name, 0)
                       for code, name in RULE_NAMES.items()
                       if res.counts.get(name)}
        compared = {"exact": "sha256", "phash": "phash", "embedding": "embedding"}
        out.dedup = [_rule_row(r, v, res.counts) | {"compared": res.candidates.get(compared[r], 0)}
                     for r, v in cfg.dedup.items()]


def _rule_row(rule: str, value, per: dict) -> dict:
    names = {"exact": ["sha256"], "phash": ["phash", "phash mirrored"], "embedding": ["embedding"]}[rule]
    row = {"rule": dedup_options.label(rule, value), "dropped": sum(per.get(n, 0) for n in names)}
    if rule == "phash":
        row["mirrored"] = per.get("phash mirrored", 0)
    return row


# -- the evaluation set ------------------------------------------------------------------------
def load_eval(cfg, source, ann_dir: str) -> EvalSet:
    """EVAL fingerprinted, and embedded where the embedding rule runs: with the model the pool's
    embeddings were made with (as their files record it), or `--decontaminate-model` naming where
    that model loads from here."""
    embed = None
    if "embedding" in cfg.decontaminate_rules:
        embed = EvalEmbedder(_model_of(source, ann_dir, cfg.decontaminate_model))
    try:
        ev = overlap.load_eval(cfg.decontaminate, embed=embed)
    except RecaptionError as e:  # say which option's path it is
        raise RecaptionError(f"--decontaminate {cfg.decontaminate}: {e}") from None
    ev.model = embed.model if embed is not None else None
    return ev


def _model_of(source, ann_dir: str, given: str | None) -> dict:
    """The CLIP model of the pool's embeddings (the first file's record), or the one given."""
    f = source.files[0]
    if not embeddings.has(ann_dir, f.name):
        raise RecaptionError(f"{f.path} has no image embeddings beside it; the embedding rule of "
                             "--decontaminate compares the pool's: annotate with --save-embeddings")
    recorded = embeddings.settings(ann_dir, f.name).get("settings") or {}
    if given:
        model, _, pretrained = given.partition("@")
        return {"model": model, "pretrained": pretrained or recorded.get("pretrained"),
                "dtype": recorded.get("dtype"), "recorded": recorded}
    if not recorded.get("model"):
        raise RecaptionError(f"the embeddings of {f.name} do not record their model; give --decontaminate-model")
    return dict(recorded)


class EvalEmbedder:
    """Image bytes -> L2-normalised CLIP image embeddings (float32 [n, d]; zeros where an image does
    not decode), the way annotate embeds the pool: one decode (JPEG draft mode at the size the CLIP
    and fingerprint inputs need; a pass that also captioned decoded larger drafts, which moves an
    embedding slightly), the model's pixel spec, normalised on the model's device; the model's own
    processor where it has no fast path. Built once, in the driver."""

    def __init__(self, model: dict):
        from recaption.scoring.clip import ClipConfig, ClipScorer

        dtype = model.get("dtype")
        self.model = {k: model.get(k) for k in ("model", "pretrained", "dtype")}
        self.scorer = ClipScorer(ClipConfig(model=model["model"], pretrained=model.get("pretrained"),
                                            dtype=None if dtype in (None, "auto") else dtype))
        self.spec = self.scorer.pixel_spec()

    def __call__(self, datas: list) -> np.ndarray:
        from recaption.io.decode import decode_pixels
        from recaption.io.images import ImageError, decode
        from recaption.scoring.fingerprint import FINGERPRINT_SPEC

        draft = max(self.scorer.image_size, FINGERPRINT_SPEC.draft_size)  # the pool's pass decoded for both
        items, ok = [], []
        for i, d in enumerate(datas):
            if not d:
                continue
            try:
                if self.spec is not None:
                    items.append(decode_pixels(d, {"clip": self.spec}, draft_size=draft)[0]["clip"])
                else:
                    items.append(decode(d, draft_size=draft).convert("RGB"))
            except ImageError:
                continue
            ok.append(i)
        if not ok:
            return np.zeros((len(datas), 1), np.float32)
        v = self.scorer.encode_images(items).float().cpu().numpy()
        out = np.zeros((len(datas), v.shape[1]), np.float32)
        out[ok] = v
        return out


# -- what an output folder's decisions say it removed (the report) ------------------------------
def from_decisions(path: str) -> Removed | None:
    """A decisions file's removed rows, from their reasons (None when it removed none)."""
    t = ann.read_table(path, columns=["reason"])
    reason = pc.fill_null(t["reason"], "")
    dup = pc.starts_with(reason, DUPLICATE_PREFIX).to_numpy(zero_copy_only=False)
    ovl = pc.starts_with(reason, OVERLAP_PREFIX).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(dup | ovl).astype(np.int32)
    if not len(rows):
        return None
    return Removed(rows, np.where(dup[rows], DUPLICATE, OVERLAP).astype(np.uint8))
