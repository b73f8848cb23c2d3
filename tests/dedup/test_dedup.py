"""Duplicate rules over several annotation files: real near-copies of the bundled photographs,
then synthetic pools against a sample-by-sample oracle (merge across files, order, survivors)."""
from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from recaption.dedup import duplicates as D
from recaption.scoring.fingerprint import fingerprint_bytes, hamming
from tests.dedup.test_survivors import one_at_a_time

PHOTOS = sorted((Path(__file__).parents[1] / "data" / "photos").glob("*.jpg"))


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", quality=quality)
    return b.getvalue()


def near_copies(path: Path) -> dict[str, bytes]:
    """The issue's copies of one photograph: byte copy, JPEG quality 60, half size, the centre 95%
    (cropped by 5%), mirrored."""
    data = path.read_bytes()
    im = Image.open(path).convert("RGB")
    w, h = im.size
    cw, ch = round(w * 0.95), round(h * 0.95)
    left, top = (w - cw) // 2, (h - ch) // 2
    return {"copy": data, "q60": jpeg(im, 60), "half": jpeg(im.resize((w // 2, h // 2), Image.Resampling.BICUBIC)),
            "crop5": jpeg(im.crop((left, top, left + cw, top + ch))),
            "mirror": jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))}


def table_of(datas: list[bytes], sha_as_hex: bool = False) -> pa.Table:
    """An annotation file's fingerprint columns, as the fingerprint annotator writes them."""
    sha, p, m, ok, _ = fingerprint_bytes(datas)
    col = pa.array([bytes(s).hex() for s in sha], pa.string()) if sha_as_hex else \
        pa.array([bytes(s) for s in sha], pa.binary(32))
    return pa.table({"key": [f"{i:04d}" for i in range(len(datas))], D.SHA_COLUMN: col,
                     D.PHASH_COLUMN: pa.array(p, pa.uint64()), D.MIRROR_COLUMN: pa.array(m, pa.uint64())})


def run(tables: list[pa.Table], cfg: D.DedupConfig, order=None) -> D.DedupResult:
    dup = D.Duplicates(cfg)
    for i in order or range(len(tables)):
        dup.add(i, D.file_keys(tables[i], cfg))
    return dup.run()


def drops_by_key(result: D.DedupResult, tables) -> dict:
    out = {}
    for f, t in enumerate(tables):
        d = result.file(f)
        keys = t["key"].to_pylist()
        for row, code, pf, pr, v in zip(d.rows, d.code, d.partner_file, d.partner_row, d.value):
            out[(f, keys[row])] = (D.RULE_NAMES[int(code)], (int(pf), tables[pf]["key"][int(pr)].as_py()), float(v))
    return out


# -- real near-copies ------------------------------------------------------------------------
@pytest.fixture(scope="module", params=range(len(PHOTOS)), ids=[p.stem for p in PHOTOS])
def pool(request):
    """File 0: the photograph and a different one; file 1: its copies (so the rules must compare
    across files)."""
    i = request.param
    original, other = PHOTOS[i], PHOTOS[(i + 1) % len(PHOTOS)]
    copies = near_copies(original)
    t0 = table_of([original.read_bytes(), other.read_bytes()]).set_column(
        0, "key", pa.array(["original", "different"]))
    t1 = table_of(list(copies.values())).set_column(0, "key", pa.array(list(copies)))
    return [t0, t1]


def test_defaults_find_the_byte_copy_re_encode_resize_and_mirror(pool):
    got = drops_by_key(run(pool, D.DedupConfig()), pool)
    original = (0, "original")
    assert got[(1, "copy")][:2] == ("sha256", original)
    assert got[(1, "q60")][:2] == ("phash", original) and got[(1, "q60")][2] <= 2
    assert got[(1, "half")][:2] == ("phash", original) and got[(1, "half")][2] <= 2
    assert got[(1, "mirror")][:2] == ("phash mirrored", original) and got[(1, "mirror")][2] <= 2
    assert (0, "different") not in got and original not in got
    assert (1, "crop5") not in got  # 4 to 12 bits on these photographs: beyond the pool's k = 2


def test_a_five_percent_crop_is_found_at_twelve_bits_and_the_other_photograph_is_not(pool):
    got = drops_by_key(run(pool, D.DedupConfig(phash_k=12)), pool)
    assert got[(1, "crop5")][:2] == ("phash", (0, "original")) and got[(1, "crop5")][2] <= 12
    assert (0, "different") not in got and (0, "original") not in got
    assert len(got) == 5


def test_reasons_name_the_partner_by_shard_and_key(pool):
    result = run(pool, D.DedupConfig())
    names = D.partner_names(result, lambda f: f"0000{f}", lambda f: pool[f]["key"])
    text = D.reasons(result.file(1), names[1]).to_pylist()
    assert text[0] == "duplicate of 00000/original (sha256, identical)"
    assert text[1] == f"duplicate of 00000/original (phash, {int(result.file(1).value[1])})"
    assert any(t.startswith("duplicate of 00000/original (phash mirrored, ") for t in text)
    assert D.category(D.PHASH_MIRRORED) == "duplicate: phash mirrored"
    assert result.counts == {"sha256": 1, "phash": 2, "phash mirrored": 1}
    assert result.candidates == {"sha256": 7, "phash": 6}  # the byte copy left after the exact rule


def test_hex_sha256_columns_and_signed_hashes_read_the_same(pool):
    t1 = table_of([PHOTOS[0].read_bytes()], sha_as_hex=True)
    t2 = table_of([PHOTOS[0].read_bytes()])
    t2 = t2.set_column(2, D.PHASH_COLUMN, pa.array(t2[D.PHASH_COLUMN].to_numpy().view(np.int64), pa.int64()))
    k1, k2 = D.file_keys(t1, D.DedupConfig()), D.file_keys(t2, D.DedupConfig())
    assert k1.sha_hi == k2.sha_hi and k1.sha_lo == k2.sha_lo and k1.phash == k2.phash


# -- synthetic pools against the oracle --------------------------------------------------------
def synthetic(seed: int, files: int = 12, rows: int = 150):
    """Random fingerprints with planted copies across files: exact (same sha), near (a pHash bit
    or two flipped), mirrored (pHash and mirror swapped), plus rows without fingerprints."""
    rng = np.random.default_rng(seed)
    n = files * rows
    sha = rng.integers(0, 2 ** 63, (n, 2), dtype=np.uint64)
    p = rng.integers(0, 2 ** 63, n, dtype=np.uint64)
    m = rng.integers(0, 2 ** 63, n, dtype=np.uint64)
    for _ in range(n // 6):
        a, b = rng.integers(0, n, 2)
        kind = rng.integers(0, 3)
        if kind == 0:
            sha[b], p[b], m[b] = sha[a], p[a], m[a]
        elif kind == 1:
            p[b] = p[a] ^ (np.uint64(1) << np.uint64(rng.integers(0, 64)))
            m[b] = m[a]
        else:
            p[b], m[b] = m[a], p[a] ^ (np.uint64(1) << np.uint64(rng.integers(0, 64)))
    has_sha, has_p = rng.random(n) > 0.03, rng.random(n) > 0.03
    score = rng.random(n).astype(np.float32)
    score[rng.random(n) < 0.05] = np.nan
    return [dict(sha=sha[s], p=p[s], m=m[s], has_sha=has_sha[s], has_p=has_p[s], score=score[s])
            for s in (slice(i * rows, (i + 1) * rows) for i in range(files))]


def keys_of(f: dict, eligible=None) -> D.FileKeys:
    ok = (f["has_sha"] | f["has_p"]) & (True if eligible is None else eligible)
    rows = np.flatnonzero(ok).astype(np.int32)
    return D.FileKeys(rows, f["sha"][rows, 0], f["sha"][rows, 1], f["has_sha"][rows], f["p"][rows], f["m"][rows],
                      f["has_p"][rows], f["score"][rows])


def oracle(files: list[dict], k: int, by_score: bool):
    """Exact rule, then the pHash rule on its survivors, each sample by sample (test_survivors)."""
    cat = {n: np.concatenate([f[n] for f in files]) for n in files[0]}
    where = [(i, r) for i, f in enumerate(files) for r in range(len(f["p"]))]
    n = len(where)
    alive = cat["has_sha"] | cat["has_p"]
    score = np.where(np.isnan(cat["score"]), -np.inf, cat["score"])
    rank = np.empty(n, int)
    rank[np.lexsort((np.arange(n), -score))] = np.arange(n)
    rank = rank if by_score else np.arange(n)
    out = {}
    for rule in ("sha256", "phash"):
        idx = np.flatnonzero(alive & (cat["has_sha"] if rule == "sha256" else cat["has_p"]))
        if rule == "sha256":
            sha = cat["sha"]
            same = (sha[idx, None, 0] == sha[None, idx, 0]) & (sha[idx, None, 1] == sha[None, idx, 1])
            dist = np.where(same, 0, 99)
        else:
            p, m = cat["p"][idx], cat["m"][idx]
            dist = np.minimum(np.minimum(hamming(p[:, None], p[None]), hamming(p[:, None], m[None])),
                              hamming(m[:, None], p[None])).astype(int)
        i, j = np.nonzero(np.triu(dist <= (0 if rule == "sha256" else k), 1))
        partner, _ = one_at_a_time(rank[idx], i, j, dist[i, j])
        for x in np.flatnonzero(partner >= 0):
            out[where[idx[x]]] = (rule, where[idx[partner[x]]])
            alive[idx[x]] = False
    return out


@pytest.mark.parametrize("by_score", [False, True])
def test_synthetic_pools_match_the_oracle_across_files(by_score):
    files = synthetic(seed=3)
    cfg = D.DedupConfig(score="score" if by_score else None)
    dup = D.Duplicates(cfg)
    for i in np.random.default_rng(0).permutation(len(files)):  # files arrive in any order
        dup.add(int(i), keys_of(files[i]))
    result = dup.run()
    got = {}
    for f in range(len(files)):
        d = result.file(f)
        for row, code, pf, pr in zip(d.rows, d.code, d.partner_file, d.partner_row):
            rule = "sha256" if code == D.EXACT else "phash"
            got[(f, int(row))] = (rule, (int(pf), int(pr)))
    want = oracle(files, D.PHASH_K, by_score)
    assert got == want
    assert len({f for (f, _), (_, (pf, _)) in got.items() if pf != f}) > 3  # partners in other files
    assert all(key != partner for key, (_, partner) in got.items())  # never its own duplicate
    assert sum(result.counts.values()) == len(got)


def test_the_same_pool_gives_the_same_drops_every_time():
    files = synthetic(seed=5)

    def once(order):
        dup = D.Duplicates(D.DedupConfig())
        for i in order:
            dup.add(int(i), keys_of(files[i]))
        r = dup.run()
        return {f: tuple(a.tobytes() for a in (r.file(f).rows, r.file(f).code, r.file(f).partner_file,
                                                r.file(f).partner_row, r.file(f).value)) for f in range(len(files))}

    assert once(range(len(files))) == once(reversed(range(len(files))))


def test_the_survivor_is_the_best_score_and_a_missing_score_comes_last():
    sha = np.array([[7, 7]] * 4, dtype=np.uint64)
    p = np.arange(4, dtype=np.uint64) << np.uint64(40)  # far apart: only the exact rule matches
    files = [dict(sha=sha[i:i + 1], p=p[i:i + 1], m=~p[i:i + 1], has_sha=np.ones(1, bool), has_p=np.ones(1, bool),
                  score=np.array([s], np.float32)) for i, s in enumerate([0.2, np.nan, 0.9, 0.2])]
    for by_score, survivor in ((False, 0), (True, 2)):
        dup = D.Duplicates(D.DedupConfig(score="score" if by_score else None))
        for i, f in enumerate(files):
            dup.add(i, keys_of(f))
        r = dup.run()
        dropped = sorted(f for f in range(4) if len(r.file(f)))
        assert dropped == sorted(set(range(4)) - {survivor})
        assert all(r.file(f).partner_file.tolist() == [survivor] for f in dropped)


def test_the_exact_rule_compares_128_bits_not_the_first_word():
    sha = np.array([[1, 2], [1, 3], [1, 2]], dtype=np.uint64)
    f = dict(sha=sha, p=np.array([1, 1 << 30, 1 << 50], np.uint64), m=np.array([3, 5, 9], np.uint64),
             has_sha=np.ones(3, bool), has_p=np.ones(3, bool), score=np.zeros(3, np.float32))
    dup = D.Duplicates(D.DedupConfig(phash_k=None))
    dup.add(0, keys_of(f))
    d = dup.run().file(0)
    assert d.rows.tolist() == [2] and d.partner_row.tolist() == [0]


def test_only_eligible_rows_take_part():
    files = synthetic(seed=9, files=2, rows=100)
    files[1]["sha"][:] = files[0]["sha"]  # file 1 copies file 0 exactly
    eligible = np.zeros(100, bool)
    eligible[:10] = True
    dup = D.Duplicates(D.DedupConfig(phash_k=None))
    dup.add(0, keys_of(files[0], eligible))  # filtered rows of file 0 are neither dropped nor partners
    dup.add(1, keys_of(files[1]))
    r = dup.run()
    d = r.file(1)
    in_file0 = d.partner_file == 0
    assert set(d.partner_row[in_file0].tolist()) <= set(range(10)) and in_file0.sum() >= 8
    assert not len(r.file(0))


def test_file_keys_skips_rows_without_fingerprints_and_outside_eligible():
    t = pa.table({D.SHA_COLUMN: pa.array([b"a" * 32, None, b"b" * 32, None], pa.binary(32)),
                  D.PHASH_COLUMN: pa.array([1, None, 3, None], pa.uint64()),
                  D.MIRROR_COLUMN: pa.array([1, None, 3, 4], pa.uint64()),
                  "clip_raw": pa.array([0.5, 0.1, None, 0.3], pa.float32())})
    k = D.file_keys(t, D.DedupConfig(score="clip_raw"), eligible=np.array([True, True, False, True]))
    assert k.rows.tolist() == [0]
    assert k.has_sha.tolist() == [True] and k.has_phash.tolist() == [True]
    assert k.sha_hi[0] == int.from_bytes(b"a" * 8, "big") and k.score.tolist() == [0.5]
    assert D.DedupConfig(score="clip_raw").columns() == [D.SHA_COLUMN, D.PHASH_COLUMN, D.MIRROR_COLUMN, "clip_raw"]
    # with the embedding rule every eligible row takes part (the embedding files say which have one)
    k = D.file_keys(t, D.DedupConfig(cosine=0.9), eligible=np.array([True, True, False, True]))
    assert k.rows.tolist() == [0, 1, 3]


# -- bounded memory ------------------------------------------------------------------------
def test_a_huge_group_of_one_phash_is_one_representative_not_a_quadratic_pair_list():
    n = 60_000  # 1.8e9 pairs if every pair were listed
    keys = D.FileKeys(np.arange(n, dtype=np.int32), np.arange(n, dtype=np.uint64), np.zeros(n, np.uint64),
                      np.ones(n, bool), np.full(n, 12345, np.uint64), np.full(n, 999, np.uint64), np.ones(n, bool))
    dup = D.Duplicates(D.DedupConfig())
    dup.add(0, keys)
    del keys
    tracemalloc.start()
    r = dup.run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    d = r.file(0)
    assert len(d) == n - 1 and (d.partner_row == 0).all() and (d.value == 0).all()
    assert peak < 400 * n  # bytes: linear in the rows (the outcome itself is ~20 bytes a row)


def test_driver_memory_per_row_is_bounded():
    """Peak numpy memory while the exact and pHash rules run, per candidate row: the pool's columns
    (39 bytes), the pHash tables' sort buffers (32) and their candidates; nothing that grows with
    the square of the pool. What makes 10**7 rows fit in a GB (scripts/bench_dedup.py measures the
    real RSS at that size)."""
    n = 400_000
    rng = np.random.default_rng(1)
    dup = D.Duplicates(D.DedupConfig())
    s = n // 8

    def words():
        return rng.integers(0, 2 ** 63, s, dtype=np.uint64)

    for f in range(8):
        dup.add(f, D.FileKeys(np.arange(s, dtype=np.int32), words(), words(), np.ones(s, bool), words(), words(),
                              np.ones(s, bool)))
    tracemalloc.start()
    dup.run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak / n < 160, f"{peak / n:.0f} bytes a row"
