"""Evaluation-set overlap: pool samples that copy an evaluation image, found per annotation file.

An evaluation set (EVAL) is a folder of image files and/or WebDataset shards (a benchmark's test
images, say), or one shard, fingerprinted with the pool's own functions
(`recaption.scoring.fingerprint`: sha256 of the bytes, pHash and mirrored pHash of the decoded
pixels); no model is needed for these two rules. The embedding rule compares the pool's image
embeddings with EVAL's, which the caller computes with the same CLIP model (`EvalSet.embeddings`).

Each pool row is matched against the whole set, file by file (the set is small: it is held
whole, the pool never is): a row overlaps when its sha256 equals an EVAL image's, or its pHash is
within k bits of one in either orientation, or its embedding's cosine with one is >= t. The first
rule that matches names the image (the closest one, the first in EVAL's order on ties), and the
reason is `overlaps EVAL/NAME (rule, value)`. Thresholds:
docs/formats.md#duplicates-and-evaluation-overlap.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import numpy as np

from recaption.errors import RecaptionError, require
from recaption.dedup import hamming
from recaption.dedup.duplicates import (EMBEDDING, EXACT, MIRROR_COLUMN, PHASH, PHASH_COLUMN, PHASH_MIRRORED,
                                        RULE_NAMES, SHA_COLUMN, FileDrops, FileKeys)
# k against an evaluation set, in bits (docs/formats.md#thresholds)
from recaption.dedup.options import OVERLAP_PHASH_K

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class OverlapConfig:
    """Which overlap rules run, and their thresholds."""

    exact: bool = True
    phash_k: int | None = OVERLAP_PHASH_K
    cosine: float | None = None  # embedding rule at cosine >= this; None: off
    score = None  # (file_keys reads no score for overlaps)

    def columns(self) -> list[str]:
        """The annotation columns the per-file keys are read from."""
        cols = [SHA_COLUMN] if self.exact else []
        return cols + ([PHASH_COLUMN, MIRROR_COLUMN] if self.phash_k is not None else [])


@dataclass
class EvalSet:
    """An evaluation set's fingerprints, one row per image, in the set's order."""

    name: str  # EVAL in reasons: the folder's (or shard's) base name
    names: list[str]  # each image: its path inside the folder, or SHARD/KEY
    sha_hi: np.ndarray
    sha_lo: np.ndarray
    phash: np.ndarray
    mirror: np.ndarray
    has_phash: np.ndarray  # False where the image could not be decoded (its sha256 still counts)
    embeddings: np.ndarray | None = None  # float [n, d], set by the caller (the pool's CLIP model)
    errors: list[dict] = field(default_factory=list)  # {"name", "error"}: unreadable or undecodable
    model: dict | None = None  # the model that made `embeddings`, as recorded

    def __len__(self):
        return len(self.names)


# -- the evaluation set ------------------------------------------------------------------------
def load_eval(path: str, *, name: str | None = None, batch: int = 256, max_pixels: int | None = None,
              embed=None) -> EvalSet:
    """Fingerprint every image of EVAL: image files anywhere under a folder (sorted by path) and
    the samples of its shards, or one shard (or a list or pattern `recaption.io.sources` reads).
    `embed(list of image bytes) -> float [n, d]` (zeros where it could not) fills `embeddings`."""
    from recaption.io.fs import fs_for
    from recaption.io.sources import list_shards, shard_suffix

    fs, root = fs_for(path)
    if fs.isdir(root):
        found = sorted(fs.find(root))
        images = [p for p in found if p.lower().endswith(IMAGE_SUFFIXES)]
        shards = [fs.unstrip_protocol(p) if "://" in path else p for p in found if shard_suffix(p)]
        rel = [posixpath.relpath(p, root.rstrip("/")) for p in images]
    else:
        images, rel, shards = [], [], list_shards(path)
    if not images and not shards:
        raise RecaptionError(f"no images (nor shards) in {path}")
    label = name or posixpath.basename(str(path).rstrip("/")).split(".")[0] or "eval"
    out = _Builder(label, batch, max_pixels, embed)
    for p, r in zip(images, rel):
        try:
            with fs.open(p, "rb") as f:
                out.add(r, f.read())
        except OSError as e:
            out.errors.append({"name": r, "error": f"read: {e}"})
    for url in shards:
        _add_shard(out, url)
    return out.finish()


def eval_image(path: str, name: str) -> bytes | None:
    """The bytes of one EVAL image named as reasons name it (its path inside the folder, or
    SHARD/KEY), for the report's thumbnails; None where it is gone."""
    from recaption.io.fs import fs_for
    from recaption.io.shards import iter_shard
    from recaption.io.sources import list_shards, shard_name, shard_suffix

    fs, root = fs_for(path)
    if fs.isdir(root):
        p = f"{root.rstrip('/')}/{name}"
        if fs.isfile(p):
            with fs.open(p, "rb") as f:
                return f.read()
        shards = [fs.unstrip_protocol(x) if "://" in path else x for x in sorted(fs.find(root)) if shard_suffix(x)]
    else:
        shards = list_shards(path)
    shard, _, key = name.rpartition("/")
    for url in shards:
        if shard_name(url) == shard:
            for s in iter_shard(url):
                if getattr(s, "key", None) == key and getattr(s, "image_field", None):
                    return s.image_bytes
    return None


def _add_shard(out: "_Builder", url: str) -> None:
    from recaption.io.shards import ReadFailure, iter_shard

    for s in iter_shard(url):
        if isinstance(s, ReadFailure):
            out.errors.append({"name": f"{s.shard}/{s.key}" if s.key else s.shard, "error": s.reason})
        else:
            out.add(f"{s.shard}/{s.key}", s.image_bytes)


class _Builder:
    def __init__(self, name: str, batch: int, max_pixels, embed=None):
        self.name, self.batch, self.max_pixels, self.embed = name, batch, max_pixels, embed
        self.names, self.errors, self.parts, self._pending, self.vectors = [], [], [], [], []

    def add(self, name: str, data: bytes) -> None:
        self._pending.append((name, data))
        if len(self._pending) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        from recaption.scoring.fingerprint import fingerprint_bytes

        if not self._pending:
            return
        names = [n for n, _ in self._pending]
        sha, p, m, ok, errors = fingerprint_bytes([d for _, d in self._pending], max_pixels=self.max_pixels,
                                                    exact=True)  # EVAL hashed as imagehash does (docs/formats.md)
        for i, e in errors.items():
            self.errors.append({"name": names[i], "error": f"decode: {e}"})
        self.names += names
        self.parts.append((sha, p, m, ok))
        if self.embed is not None:
            self.vectors.append(np.asarray(self.embed([d for _, d in self._pending]), dtype=np.float32))
        self._pending = []

    def finish(self) -> EvalSet:
        self._flush()
        if not self.parts:
            raise RecaptionError(f"evaluation set {self.name}: no image could be read")
        sha = np.concatenate([x[0] for x in self.parts])
        hi = sha[:, :8].copy().view(">u8").ravel().astype(np.uint64)
        lo = sha[:, 8:16].copy().view(">u8").ravel().astype(np.uint64)
        p, m, ok = (np.concatenate([x[i] for x in self.parts]) for i in (1, 2, 3))
        emb = None
        if self.vectors:
            d = max(v.shape[1] for v in self.vectors)
            emb = np.concatenate([v if v.shape[1] == d else np.zeros((len(v), d), np.float32) for v in self.vectors])
        return EvalSet(self.name, self.names, hi, lo, p, m, ok, embeddings=emb, errors=self.errors)


# -- matching ----------------------------------------------------------------------------------
def overlaps(keys: FileKeys, ev: EvalSet, config: OverlapConfig,
             embeddings: np.ndarray | None = None) -> FileDrops:
    """The rows of one file (its FileKeys, from `dedup.file_keys(table, config)`) that overlap EVAL.

    `embeddings`: the file's embeddings, one row per annotation row (needed by the embedding rule)."""
    n = len(keys)
    code = np.zeros(n, dtype=np.int8)
    which = np.full(n, -1, dtype=np.int64)
    value = np.zeros(n, dtype=np.float32)
    if config.exact and keys.sha_hi is not None and len(ev):
        _exact(keys, ev, code, which)
    if config.phash_k is not None and keys.phash is not None and len(ev):
        _near(keys, ev, int(config.phash_k), code, which, value)
    if config.cosine is not None:
        if ev.embeddings is None or embeddings is None:
            raise ValueError("the embedding overlap rule needs the pool's and the evaluation set's embeddings")
        _embedding(keys, ev, float(config.cosine), np.asarray(embeddings), code, which, value)
    hit = code > 0
    # a duplicate of an EVAL image: its partner is image `partner_row` of the set (file 0)
    return FileDrops(keys.rows[hit], code[hit], np.zeros(int(hit.sum()), np.int32), which[hit].astype(np.int32),
                     value[hit])


def _exact(keys, ev, code, which) -> None:
    order = np.lexsort((np.arange(len(ev)), ev.sha_lo, ev.sha_hi))  # equal hashes: the first image first
    hi, lo = ev.sha_hi[order], ev.sha_lo[order]
    rows = np.flatnonzero(keys.has_sha)
    start = np.searchsorted(hi, keys.sha_hi[rows], side="left")
    n = np.searchsorted(hi, keys.sha_hi[rows], side="right") - start  # EVAL images sharing the first word
    r = np.repeat(rows, n)
    j = np.repeat(start, n) + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    same = lo[j] == keys.sha_lo[r]
    r, j = r[same], j[same]
    first = np.r_[True, r[1:] != r[:-1]] if len(r) else np.zeros(0, bool)
    code[r[first]], which[r[first]] = EXACT, order[j[first]]


def _near(keys, ev, k: int, code, which, value) -> None:
    rows = np.flatnonzero((code == 0) & keys.has_phash)
    good = np.flatnonzero(ev.has_phash)
    if not len(rows) or not len(good):
        return
    ne, nr = len(good), len(rows)
    x = np.concatenate([keys.phash[rows], keys.mirror[rows]])  # the row, then the row mirrored
    y = np.concatenate([ev.phash[good], ev.mirror[good]])
    _, (a, b, d) = hamming.join(x, k, y, within=False)
    mirrored = (a >= nr) != (b >= ne)
    keep = ~((a >= nr) & (b >= ne))  # mirrored against mirrored says what plain against plain says
    a, b, d, mirrored = a[keep] % nr, good[b[keep] % ne], d[keep].astype(np.int64), mirrored[keep]
    order = np.lexsort((b, mirrored, d, a))  # per row: fewest bits, unmirrored, first image
    a, b, d, mirrored = a[order], b[order], d[order], mirrored[order]
    first = np.r_[True, a[1:] != a[:-1]] if len(a) else np.zeros(0, bool)
    r = rows[a[first]]
    code[r] = np.where(mirrored[first], PHASH_MIRRORED, PHASH)
    which[r], value[r] = b[first], d[first]


def _embedding(keys, ev, cosine: float, emb: np.ndarray, code, which, value) -> None:
    require("faiss", "dedup")
    import faiss

    rows = np.flatnonzero(code == 0)
    if not len(rows):
        return
    x = emb[keys.rows[rows]].astype(np.float32)
    e = np.asarray(ev.embeddings, dtype=np.float32)
    norm, enorm = np.linalg.norm(x, axis=1), np.linalg.norm(e, axis=1)
    ok = np.isfinite(norm) & (norm > 0)
    eok = np.flatnonzero(np.isfinite(enorm) & (enorm > 0))
    if not ok.any() or not len(eok):
        return
    rows, x = rows[ok], x[ok] / norm[ok, None]
    index = faiss.IndexFlatIP(e.shape[1])
    index.add(np.ascontiguousarray(e[eok] / enorm[eok, None]))
    radius = float(np.nextafter(np.float32(cosine), np.float32(-np.inf)))  # faiss keeps scores > radius
    lims, dist, idx = index.range_search(np.ascontiguousarray(x), radius)
    q = np.repeat(np.arange(len(x)), np.diff(lims.astype(np.int64)))
    keep = dist >= cosine
    q, dist, idx = q[keep], dist[keep], eok[idx[keep]]
    order = np.lexsort((idx, -dist, q))  # per row: highest cosine, first image
    q, dist, idx = q[order], dist[order], idx[order]
    first = np.r_[True, q[1:] != q[:-1]] if len(q) else np.zeros(0, bool)
    r = rows[q[first]]
    code[r], which[r], value[r] = EMBEDDING, idx[first], dist[first]


def reasons(ov: FileDrops, ev: EvalSet):
    """Drop reasons as a string array: `overlaps EVAL/NAME (rule, value)`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from recaption.dedup.duplicates import reasons as dup_reasons

    names = pc.binary_join_element_wise(ev.name, pc.take(pa.array(ev.names, pa.string()),
                                                         pa.array(ov.partner_row.astype(np.int64))), "/")
    return dup_reasons(ov, names, prefix="overlaps")


def counts(per_file: list[FileDrops], config: OverlapConfig) -> dict[str, int]:
    """Rows overlapping, per rule name (every rule of the config listed, zeros included)."""
    names = (["sha256"] if config.exact else []) + (["phash", "phash mirrored"] if config.phash_k is not None else []) \
        + (["embedding"] if config.cosine is not None else [])
    out = dict.fromkeys(names, 0)
    for ov in per_file:
        for c, n in zip(*np.unique(ov.code, return_counts=True)):
            out[RULE_NAMES[int(c)]] = out.get(RULE_NAMES[int(c)], 0) + int(n)
    return out
