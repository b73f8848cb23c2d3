"""Duplicate rules over the pool: exact (sha256), near (pHash), semantic (image embeddings).

Work is per annotation file, then merged on the driver in bounded memory:

1. per file (threads or Ray tasks), `file_keys` turns the fingerprint columns of the rows a mix
   still keeps into a few numpy arrays (about 40 bytes a row: rows, two sha256 words, two pHashes,
   a score);
2. on the driver, `Duplicates.add` collects them and `Duplicates.run` applies the rules in turn,
   each to the samples the earlier ones kept: exact duplicates (equal sha256), near duplicates
   (pHash within k bits, either orientation: `recaption.dedup.hamming`), semantic duplicates
   (embedding cosine >= t inside k-means clusters: `recaption.dedup.semantic`, which reads the
   embedding files itself, file by file);
3. the outcome is columnar per file (`FileDrops`: row -> rule, partner file and row, value), plus
   counts per rule for a dry run; `reasons` writes `duplicate of SHARD/KEY (rule, value)`.

Survivors follow `recaption.dedup.survivors`: the first sample in order is kept, the order being
input order (file, then row) or, with a score, best score first. A sample is never its own
duplicate, and files are compared with each other. Rules and thresholds:
docs/formats.md#duplicates-and-evaluation-overlap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from recaption.dedup import hamming
from recaption.dedup.options import PHASH_K  # the pool's pHash threshold, in bits (docs/formats.md#thresholds)
from recaption.dedup.survivors import first_kept
from recaption.io import arrays

# Annotation columns the rules read (the fingerprint annotator writes them).
SHA_COLUMN, PHASH_COLUMN, MIRROR_COLUMN = "image_sha256", "phash", "phash_mirror"

# Rule codes in FileDrops.code, and their names in reasons and counts.
EXACT, PHASH, PHASH_MIRRORED, EMBEDDING = 1, 2, 3, 4
RULE_NAMES = {EXACT: "sha256", PHASH: "phash", PHASH_MIRRORED: "phash mirrored", EMBEDDING: "embedding"}


@dataclass(frozen=True)
class DedupConfig:
    """Which rules run, their thresholds, and how a survivor is chosen."""

    exact: bool = True
    phash_k: int | None = PHASH_K  # None: no pHash rule
    cosine: float | None = None  # embedding rule at cosine >= this; None: off
    score: str | None = None  # keep the highest of this column first (null last); None: input order
    cluster_size: int = 1000  # embedding rule: mean k-means cluster size
    seed: int = 0

    def columns(self) -> list[str]:
        """The annotation columns `file_keys` reads for these rules."""
        cols = [SHA_COLUMN] if self.exact else []
        cols += [PHASH_COLUMN, MIRROR_COLUMN] if self.phash_k is not None else []
        return cols + ([self.score] if self.score else [])


@dataclass
class FileKeys:
    """One annotation file's candidate rows for the rules, as plain arrays (picklable, small)."""

    rows: np.ndarray  # int32: row numbers in the annotation file, increasing
    sha_hi: np.ndarray | None = None  # uint64: the sha256's first 8 bytes (big-endian)
    sha_lo: np.ndarray | None = None  # uint64: its next 8 bytes
    has_sha: np.ndarray | None = None  # bool
    phash: np.ndarray | None = None  # uint64
    mirror: np.ndarray | None = None  # uint64: pHash of the mirrored image
    has_phash: np.ndarray | None = None  # bool
    score: np.ndarray | None = None  # float32, NaN where missing

    def __len__(self):
        return len(self.rows)


@dataclass
class FileDrops:
    """One file's duplicates: per dropped row, the rule and the kept sample it duplicates (or, for
    an evaluation-set overlap, `recaption.dedup.overlap`, the EVAL image it copies)."""

    rows: np.ndarray  # int32, increasing
    code: np.ndarray  # int8: EXACT, PHASH, PHASH_MIRRORED or EMBEDDING
    partner_file: np.ndarray  # int32: index of the partner's annotation file (0 for an EVAL image)
    partner_row: np.ndarray  # int32: its row there (the image's index in EVAL's order)
    value: np.ndarray  # float32: pHash bits, or cosine; 0 for sha256

    def __len__(self):
        return len(self.rows)


@dataclass
class DedupResult:
    """What the rules dropped, per file, and counts per rule name."""

    files: dict[int, FileDrops] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)  # rows each rule compared

    def file(self, index: int) -> FileDrops:
        """The drops of one file (empty when none)."""
        return self.files.get(index) or _no_drops()


# -- per file ----------------------------------------------------------------------------------
def file_keys(table, config: DedupConfig, eligible: np.ndarray | None = None) -> FileKeys:
    """An annotation table (pyarrow, with `config.columns()`) -> its FileKeys: the rows of
    `eligible` (default: all) that have a fingerprint the rules read (every eligible row when the
    embedding rule runs: rows without an embedding are skipped there)."""
    n = table.num_rows
    ok = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).copy()
    hi = lo = has_sha = p = m = has_p = score = None
    if config.exact:
        hi, lo, has_sha = sha_words(table.column(SHA_COLUMN))
    if config.phash_k is not None:
        p, pv = uint64_column(table.column(PHASH_COLUMN))
        m, mv = uint64_column(table.column(MIRROR_COLUMN))
        has_p = pv & mv
    if config.cosine is None:  # the embedding rule reads the embedding files: every row may take part
        present = np.zeros(n, dtype=bool)
        for mask in (has_sha, has_p):
            if mask is not None:
                present |= mask
        ok &= present
    rows = np.flatnonzero(ok).astype(np.int32)
    if config.score:
        score = np.asarray(table.column(config.score).to_numpy(zero_copy_only=False), dtype=np.float32)[rows]
    def pick(a):
        return None if a is None else a[rows]

    return FileKeys(rows, pick(hi), pick(lo), pick(has_sha), pick(p), pick(m), pick(has_p), score)


def sha_words(col) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sha256 column (32-byte binary, or 64 hex digits) -> (first 8 bytes, next 8 bytes as
    big-endian uint64, valid). 128 bits decide equality: two different images agree on them with
    probability 2**-128 a pair, below 10**-20 for any pool of 10**9 samples."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = arrays.one(col)
    valid = arrays.valid(col)
    n = len(col)
    if pa.types.is_fixed_size_binary(col.type):
        raw = np.frombuffer(col.buffers()[1], dtype=np.uint8, count=(col.offset + n) * col.type.byte_width)
        words = raw.reshape(-1, col.type.byte_width)[col.offset:, :16]
    else:  # hex text (or variable binary of 32 bytes)
        filled = pc.fill_null(col, "0" * 64 if pa.types.is_string(col.type) else b"\0" * 32)
        data = [bytes.fromhex(s) if isinstance(s, str) else s for s in filled.to_pylist()]
        words = np.frombuffer(b"".join(d[:16].ljust(16, b"\0") for d in data), dtype=np.uint8).reshape(n, 16)
    words = np.ascontiguousarray(words)
    hi = words[:, :8].copy().view(">u8").ravel().astype(np.uint64)
    lo = words[:, 8:16].copy().view(">u8").ravel().astype(np.uint64)
    return hi, lo, valid


def uint64_column(col) -> tuple[np.ndarray, np.ndarray]:
    """A uint64 (or int64) column -> (values as uint64 with 0 for null, valid)."""
    import pyarrow.compute as pc

    col = arrays.one(col)
    valid = arrays.valid(col)
    values = pc.fill_null(col, 0).to_numpy(zero_copy_only=False)
    return values.astype(np.int64).view(np.uint64) if values.dtype == np.int64 else values.astype(np.uint64), valid


# -- on the driver -----------------------------------------------------------------------------
class Duplicates:
    """Collect every file's FileKeys, then run the rules over the whole pool.

        dup = Duplicates(config)
        for i, table in enumerate(files):           # any order; threads or Ray tasks
            dup.add(i, file_keys(table, config, eligible))
        result = dup.run(embeddings=load)           # load(i) -> float [rows of file i, d]

    Memory on the driver: about 40 bytes a candidate row while the rules run (10**7 rows: under a
    GB with the pHash rule's sort buffers), plus what the embedding rule streams.
    """

    def __init__(self, config: DedupConfig):
        self.config = config
        self._files: dict[int, FileKeys] = {}

    def add(self, index: int, keys: FileKeys) -> None:
        """One file's keys, handed over: `run` releases their arrays as it copies them (a file
        index added twice is an error)."""
        if index in self._files:
            raise ValueError(f"file {index} added twice")
        self._files[index] = keys

    def run(self, embeddings: Callable[[int], np.ndarray] | None = None, tmpdir: str | None = None) -> DedupResult:
        """Apply the rules (exact, pHash, embedding: each to the samples the earlier ones kept)."""
        cfg = self.config
        pool = _Pool(self._files, cfg)
        self._files = {}  # the pool owns the arrays now; nothing is held twice
        drops, counts, seen = [], {}, {}
        if cfg.exact:
            drops.append(pool.exact())
            seen["sha256"] = pool.last_candidates
        pool.free_sha()
        if cfg.phash_k is not None:
            drops.append(pool.near(int(cfg.phash_k)))
            seen["phash"] = pool.last_candidates
        pool.free_phash()
        if cfg.cosine is not None:
            if embeddings is None:
                raise ValueError("the embedding rule needs the embeddings (a loader per file)")
            drops.append(pool.semantic(embeddings, float(cfg.cosine), tmpdir))
            seen["embedding"] = pool.last_candidates
        result = pool.result(drops)
        for d in result.files.values():
            for code, n in zip(*np.unique(d.code, return_counts=True)):
                counts[RULE_NAMES[int(code)]] = counts.get(RULE_NAMES[int(code)], 0) + int(n)
        result.counts = {name: counts.get(name, 0) for name in _rule_names(cfg)}
        result.candidates = seen
        return result


def _rule_names(cfg: DedupConfig) -> list[str]:
    return (["sha256"] if cfg.exact else []) + (["phash", "phash mirrored"] if cfg.phash_k is not None else []) + \
        (["embedding"] if cfg.cosine is not None else [])


class _Pool:
    """Every file's keys side by side, in file order: position g is (file, row)."""

    def __init__(self, files: dict[int, FileKeys], cfg: DedupConfig):
        self.cfg = cfg
        order = sorted(files)
        sizes = [len(files[i]) for i in order]
        self.file_ids = np.asarray(order, dtype=np.int32)
        self.offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.n = int(self.offsets[-1])
        parts = [files[i] for i in order]
        # column by column, each file's arrays released once copied: the pool is never held twice
        self.rows = _take(parts, "rows", np.int32)
        self.alive = np.ones(self.n, dtype=bool)
        self.last_candidates = 0
        if cfg.exact:
            self.sha_hi, self.sha_lo = _take(parts, "sha_hi", np.uint64), _take(parts, "sha_lo", np.uint64)
            self.has_sha = _take(parts, "has_sha", bool)
        if cfg.phash_k is not None:
            self.phash, self.mirror = _take(parts, "phash", np.uint64), _take(parts, "mirror", np.uint64)
            self.has_phash = _take(parts, "has_phash", bool)
        if cfg.score:
            score = _take(parts, "score", np.float32)
            score = np.where(np.isnan(score), -np.inf, score)
            self.rank = np.empty(self.n, dtype=np.int64)
            self.rank[np.lexsort((np.arange(self.n), -score))] = np.arange(self.n)  # best first, then input order
        else:
            self.rank = None  # input order: the position itself

    def ranks(self, g: np.ndarray) -> np.ndarray:
        """The order of positions g (lower comes first)."""
        return g if self.rank is None else self.rank[g]

    def free_sha(self) -> None:
        """Drop the sha256 words (the pHash rule needs the memory)."""
        self.sha_hi = self.sha_lo = self.has_sha = None

    def free_phash(self) -> None:
        """Drop the pHashes."""
        self.phash = self.mirror = self.has_phash = None

    # -- rules: each returns (dropped positions, partner positions, code, value) ---------------
    def exact(self):
        """Equal sha256: every member of a group but the first names the first."""
        mask = self.alive & self.has_sha
        whole = bool(mask.all())
        g = None if whole else np.flatnonzero(mask)
        del mask
        self.last_candidates = self.n if whole else len(g)
        hi = self.sha_hi if whole else self.sha_hi[g]
        sub = np.flatnonzero(_repeats(hi))  # only rows whose first word repeats: the rest are unique
        if not len(sub):
            return _no_rule()
        sub = sub if whole else g[sub]
        h, lo = self.sha_hi[sub], self.sha_lo[sub]
        order = np.lexsort((self.ranks(sub), lo, h))
        sub, h, lo = sub[order], h[order], lo[order]
        new = np.r_[True, (h[1:] != h[:-1]) | (lo[1:] != lo[:-1])]
        first = sub[np.maximum.accumulate(np.where(new, np.arange(len(sub)), 0))]
        d = ~new
        return self._drop(sub[d], first[d], np.full(int(d.sum()), EXACT, np.int8), np.zeros(int(d.sum()), np.float32))

    def near(self, k: int):
        """pHash within k bits in either orientation (a against b, a against mirrored b, or the
        reverse); samples with the same (phash, mirror) pair share one fate first."""
        g = np.flatnonzero(self.alive & self.has_phash)
        self.last_candidates = len(g)
        if len(g) < 2:
            return _no_rule()
        p, m = (self.phash, self.mirror) if len(g) == self.n else (self.phash[g], self.mirror[g])
        self.free_phash()  # this rule is their last reader: keep only the candidates' copy
        rep = _same_pair(p, m, self.ranks(g))  # None, or per sample the first with the same pair
        reps = g if rep is None else g[rep == np.arange(len(g))]
        if rep is not None:
            p, m = p[rep == np.arange(len(g))], m[rep == np.arange(len(g))]
        own, cross = hamming.join(p, k, m)
        del p, m
        a, b, dist, mirrored = _orientations(own, cross)
        # the distance and whether it was mirrored travel through first_kept as 2*distance + mirrored
        partner, packed = first_kept(self.ranks(reps), a, b, dist * 2 + mirrored)
        if rep is None:
            d = np.flatnonzero(partner >= 0)
            code = np.where(packed[d] % 2 == 1, PHASH_MIRRORED, PHASH).astype(np.int8)
            return self._drop(g[d], g[partner[d]], code, (packed[d] // 2).astype(np.float32))
        # back to every candidate: a sample shares its representative's fate
        at = np.searchsorted(reps, g[rep])  # each sample's representative, as an index into reps
        part, val = partner[at], packed[at]
        first = rep == np.arange(len(g))
        dropped = np.flatnonzero(~first | (part >= 0))
        part, val, same = part[dropped], val[dropped], ~first[dropped] & (part[dropped] < 0)
        partner_g = np.where(same, g[rep[dropped]], reps[np.maximum(part, 0)])  # kept representative: it is the partner
        code = np.where(~same & (val % 2 == 1), PHASH_MIRRORED, PHASH).astype(np.int8)
        value = np.where(same, 0, val // 2).astype(np.float32)
        return self._drop(g[dropped], partner_g, code, value)

    def semantic(self, embeddings, cosine: float, tmpdir):
        """Embedding cosine >= `cosine` inside k-means clusters (recaption.dedup.semantic)."""
        from recaption.dedup import semantic

        g = np.flatnonzero(self.alive)
        self.last_candidates = len(g)
        cut = np.searchsorted(g, self.offsets)  # g is sorted: each file's positions are one slice
        files = [(int(self.file_ids[f]), self.rows[g[cut[f]:cut[f + 1]]], g[cut[f]:cut[f + 1]])
                 for f in range(len(self.file_ids)) if cut[f + 1] > cut[f]]
        a, b, cos = semantic.pairs(files, embeddings, cosine, cluster_size=self.cfg.cluster_size,
                                   seed=self.cfg.seed, tmpdir=tmpdir)
        idx = np.searchsorted(g, np.concatenate([a, b]))
        ia, ib = idx[:len(a)], idx[len(a):]
        partner, value = first_kept(self.ranks(g), ia, ib, cos.astype(np.float32))
        d = partner >= 0
        return self._drop(g[d], g[partner[d]], np.full(int(d.sum()), EMBEDDING, np.int8), value[d])

    def _drop(self, dropped, partner, code, value):
        self.alive[dropped] = False
        return dropped, partner, code, value

    def result(self, drops) -> DedupResult:
        """Per file FileDrops from the rules' dropped positions."""
        parts = [d for d in drops if len(d[0])]
        out = DedupResult()
        if not parts:
            return out
        g, pg, code, value = (np.concatenate([p[i] for p in parts]) for i in range(4))
        order = np.argsort(g, kind="stable")
        g, pg, code, value = g[order], pg[order], code[order], value[order]
        f = np.searchsorted(self.offsets, g, side="right") - 1
        pf = np.searchsorted(self.offsets, pg, side="right") - 1
        for i in np.unique(f):
            sel = f == i
            out.files[int(self.file_ids[i])] = FileDrops(
                self.rows[g[sel]], code[sel], self.file_ids[pf[sel]], self.rows[pg[sel]], value[sel].astype(np.float32))
        return out


def _orientations(own, cross):
    """Pairs of representatives from the pHash join -> (a, b, distance, mirrored), one row per
    pair: its smallest distance, unmirrored on ties. `cross` compares p of one with m of the other
    (either way round); a sample against its own mirror is no pair."""
    ca, cb, cd = cross
    other = ca != cb
    a = np.concatenate([own[0], ca[other]])
    b = np.concatenate([own[1], cb[other]])
    d = np.concatenate([own[2], cd[other]]).astype(np.int16)
    mirrored = np.concatenate([np.zeros(len(own[0]), np.int16), np.ones(int(other.sum()), np.int16)])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((mirrored, d, hi, lo))
    lo, hi, d, mirrored = lo[order], hi[order], d[order], mirrored[order]
    first = np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])] if len(lo) else np.zeros(0, bool)
    return lo[first], hi[first], d[first], mirrored[first]


def _same_pair(p: np.ndarray, m: np.ndarray, rank: np.ndarray) -> np.ndarray | None:
    """For each sample, the index of the earliest sample with the same (p, m) pair (itself when
    first), or None when no two samples share one: only samples whose p repeats are sorted, so a
    pool of distinct hashes costs one sort."""
    n = len(p)
    sub = np.flatnonzero(_repeats(p))
    if not len(sub):
        return None
    rep = np.arange(n)
    order = np.lexsort((rank[sub], m[sub], p[sub]))
    sub = sub[order]
    ps, ms = p[sub], m[sub]
    new = np.r_[True, (ps[1:] != ps[:-1]) | (ms[1:] != ms[:-1])]
    rep[sub] = sub[np.maximum.accumulate(np.where(new, np.arange(len(sub)), 0))]
    return rep


def _repeats(values: np.ndarray, step: int = 1 << 20) -> np.ndarray:
    """bool: which values occur more than once (one sort, then a membership test a slice at a time,
    so no index array as long as the input is made)."""
    s = np.sort(values)
    dup = np.unique(s[1:][s[1:] == s[:-1]])
    del s
    out = np.zeros(len(values), dtype=bool)
    if len(dup):
        for a in range(0, len(values), step):
            v = values[a:a + step]
            at = np.minimum(np.searchsorted(dup, v), len(dup) - 1)
            out[a:a + step] = dup[at] == v
    return out


def _take(parts, name: str, dtype) -> np.ndarray:
    """One FileKeys field of every file, side by side; the files' own arrays are let go."""
    out = _cat([getattr(p, name) for p in parts], dtype)
    for p in parts:
        setattr(p, name, None)
    return out


def _cat(parts, dtype) -> np.ndarray:
    parts = [np.asarray(p, dtype=dtype) for p in parts if p is not None]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _no_rule():
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.float32)


def _no_drops() -> FileDrops:
    return FileDrops(np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.int32), np.zeros(0, np.int32),
                     np.zeros(0, np.float32))


# -- reasons ---------------------------------------------------------------------------------
def partner_names(result: DedupResult, shard_of: Callable[[int], str], keys_of: Callable[[int], object]) -> dict:
    """{file index: string array aligned with result.file(i)}: each drop's partner as `SHARD/KEY`.

    Reads each partner file's keys once (`keys_of(file)`: its key column, an Arrow array or a list)
    and builds the names columnar; memory is the names of the drops, never of the pool."""
    import pyarrow as pa
    import pyarrow.compute as pc

    want: dict[int, list] = {}  # partner file -> [(dropping file, positions in its drops)]
    for f, d in result.files.items():
        for p in np.unique(d.partner_file):
            want.setdefault(int(p), []).append((f, np.flatnonzero(d.partner_file == p)))
    parts: dict[int, list] = {f: [] for f in result.files}
    for p in sorted(want):
        keys = keys_of(p)
        keys = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(keys, pa.string())
        for f, pos in want[p]:
            rows = pa.array(result.files[f].partner_row[pos].astype(np.int64))
            parts[f].append((pos, pc.binary_join_element_wise(shard_of(p), pc.take(keys, rows), "/")))
    out = {}
    for f, chunks in parts.items():
        pos = np.concatenate([c[0] for c in chunks])
        names = pa.concat_arrays([c[1].combine_chunks() if isinstance(c[1], pa.ChunkedArray) else c[1]
                                  for c in chunks])
        out[f] = pc.take(names, pa.array(np.argsort(pos, kind="stable")))
    return out


def reasons(drops: FileDrops, names, prefix: str = "duplicate of"):
    """Drop reasons as a string array, one per dropped row: `duplicate of SHARD/KEY (rule, value)`.

    `names` is the partners' `SHARD/KEY` (from `partner_names`). Values: `identical` for sha256,
    bits for pHash, the cosine to 4 decimals for embeddings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rule = pc.take(pa.array([RULE_NAMES.get(c, "") for c in range(max(RULE_NAMES) + 1)]),
                   pa.array(drops.code.astype(np.int64)))
    bits = pc.cast(pa.array(np.round(drops.value).astype(np.int64)), pa.string())
    cos = pc.cast(pa.array(np.round(drops.value.astype(np.float64), 4)), pa.string())
    value = pc.if_else(pa.array(drops.code == EXACT), "identical",
                       pc.if_else(pa.array(drops.code == EMBEDDING), cos, bits))
    return pc.binary_join_element_wise(f"{prefix} ", names, " (", rule, ", ", value, ")", "")


def category(code: int, prefix: str = "duplicate") -> str:
    """The summary category of a rule's drops (no sample names, no values): `duplicate: phash`."""
    return f"{prefix}: {RULE_NAMES[int(code)]}"
