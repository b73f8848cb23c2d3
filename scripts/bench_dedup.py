#!/usr/bin/env python
"""Benchmark the duplicate rules at pool scale (recaption.dedup.duplicates).

1. Fingerprints: --rows synthetic rows (default 10M) in files of 10,000 through the exact
   (sha256) and pHash rules (k = 2, either orientation), as the driver runs them: every file's
   FileKeys added, then `Duplicates.run`. Planted groups (--groups, 2 to 4 members spread over the
   pool, the first member first in input order): exact copies, near copies (1 or 2 pHash bits
   flipped) and mirrored copies (pHash and mirror hash swapped, a bit flipped). Every other value
   is a counter hash of the row's position, so a file is made without the others. Targets: >= 1M
   rows/s, <= 1 GB peak RSS at 10M rows, every planted group found (each non-first member dropped
   with the first member as its partner).
2. Embeddings: --emb-rows synthetic 512-d vectors (default 1M; random normal, so near-orthogonal)
   written as embedding files (recaption.io.embeddings, float16), with planted near-duplicates
   (noise 0.02 a coordinate), through the embedding rule (cosine >= 0.95, mean cluster 1,000)
   beside a brute-force faiss search (IndexFlatIP over all the vectors, range search at the same
   cosine) in the same run. A full brute-force self-search is n^2 d multiply-adds (5e14 at 1M),
   hours on a few cores, so it runs for --brute-queries query rows and its time is also given
   scaled to all rows; the rule's recall is measured against it on those rows.

3. The pool pass (`--only pool`): --pool-rows annotation rows (default 1M) as `recaption mix`
   reads them (annotation files of 10,000 rows shaped as scripts/bench_mix.py makes them, every
   row ok, with the fingerprint columns of measurement 1 and its planted groups, --pool-groups of
   them), through `api.mix --dry-run` (raw, fraction 0.3) with and without `--dedup exact,phash`:
   rows/s and peak RSS of the whole pass (the files read again for the keys, the rules on the
   driver, the removed rows carried through the statistics, select and count passes), and every
   planted copy dropped.

Each measurement runs in a fresh process, whose peak RSS is reported (ru_maxrss). Prints a table
and writes scripts/bench-dedup-results.json.

    python scripts/bench_dedup.py                              # 10M fingerprints, 1M embeddings
    python scripts/bench_dedup.py --rows 1000000 --emb-rows 100000   # quicker
    python scripts/bench_dedup.py --only pool --pool-rows 1000000    # the wired pool pass
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PER_FILE = 10_000
MASK = (1 << 64) - 1


def splitmix(x, seed: int):
    """A counter hash: uint64 array of positions -> uint64 values, independent per seed."""
    import numpy as np

    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) & MASK)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def plant(rows: int, groups: int, seed: int = 0) -> dict:
    """Planted groups: member position -> (first member, kind, flips), first member first."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 5, groups)
    pos = rng.choice(rows, size=int(sizes.sum()), replace=False)
    out = {"member": [], "base": [], "kind": [], "flip1": [], "flip2": []}
    at = 0
    for s in sizes:
        g = np.sort(pos[at:at + s])
        at += s
        kind = int(rng.integers(0, 3))  # 0 exact, 1 near, 2 mirrored
        for m in g[1:]:
            out["member"].append(m)
            out["base"].append(g[0])
            out["kind"].append(kind)
            f = rng.choice(64, 2, replace=False)
            out["flip1"].append(int(f[0]))
            out["flip2"].append(int(f[1]) if rng.random() < 0.5 else -1)  # one or two bits
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


def file_keys(f: int, rows: int, planted: dict):
    """File f's FileKeys: counter-hash fingerprints, planted members overwritten."""
    import numpy as np

    from recaption.dedup.duplicates import FileKeys

    start, stop = f * PER_FILE, min(rows, (f + 1) * PER_FILE)
    g = np.arange(start, stop, dtype=np.uint64)
    vals = [splitmix(g, s) for s in range(4)]  # sha hi, sha lo, phash, mirror
    sel = (planted["member"] >= start) & (planted["member"] < stop)
    if sel.any():
        m, b = planted["member"][sel] - start, planted["base"][sel].astype(np.uint64)
        kind, f1, f2 = planted["kind"][sel], planted["flip1"][sel], planted["flip2"][sel]
        base = [splitmix(b, s) for s in range(4)]
        flips = (np.uint64(1) << f1.astype(np.uint64)) | np.where(
            f2 >= 0, np.uint64(1) << np.maximum(f2, 0).astype(np.uint64), np.uint64(0))
        exact, near, mir = kind == 0, kind == 1, kind == 2
        for s in (0, 1):
            vals[s][m[exact]] = base[s][exact]
        vals[2][m[exact]], vals[3][m[exact]] = base[2][exact], base[3][exact]
        vals[2][m[near]], vals[3][m[near]] = base[2][near] ^ flips[near], base[3][near] ^ flips[near]
        vals[2][m[mir]], vals[3][m[mir]] = base[3][mir] ^ flips[mir], base[2][mir] ^ flips[mir]
    n = stop - start
    ones = np.ones(n, bool)
    return FileKeys(np.arange(n, dtype=np.int32), vals[0], vals[1], ones, vals[2], vals[3], ones.copy())


def run_fingerprints(rows: int, groups: int) -> dict:
    """One process: make and add every file, run the exact and pHash rules, check the planted groups."""
    import resource

    import numpy as np

    from recaption.dedup.duplicates import PHASH_K, DedupConfig, Duplicates, _Pool

    planted = plant(rows, groups)
    files = (rows + PER_FILE - 1) // PER_FILE
    t0 = time.perf_counter()
    dup = Duplicates(DedupConfig())
    for f in range(files):
        dup.add(f, file_keys(f, rows, planted))
    t1 = time.perf_counter()
    timings = {}
    real = {name: getattr(_Pool, name) for name in ("exact", "near")}

    def timed(name):
        def run(self, *a):
            s = time.perf_counter()
            out = real[name](self, *a)
            timings[name] = time.perf_counter() - s
            return out
        return run

    for name in real:  # per-rule seconds, the rules themselves untouched
        setattr(_Pool, name, timed(name))
    result = dup.run()
    t2 = time.perf_counter()
    got_partner = np.full(rows, -1, dtype=np.int64)
    for f, d in result.files.items():
        got_partner[f * PER_FILE + d.rows] = d.partner_file.astype(np.int64) * PER_FILE + d.partner_row
    found = got_partner[planted["member"]] == planted["base"]
    member_groups = np.unique(planted["base"])
    missed_groups = np.unique(planted["base"][~found])
    extra = int((got_partner >= 0).sum() - found.sum())
    return {"rows": rows, "files": files, "k": PHASH_K, "planted_groups": int(len(member_groups)),
            "planted_copies": int(len(found)), "groups_found": int(len(member_groups) - len(missed_groups)),
            "copies_found": int(found.sum()), "other_drops": extra, "counts": result.counts,
            "add_s": round(t1 - t0, 2), "rules_s": round(t2 - t1, 2),
            "exact_s": round(timings.get("exact", 0), 2), "phash_s": round(timings.get("near", 0), 2),
            "rows_per_s": round(rows / (t2 - t1)),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


# -- embeddings --------------------------------------------------------------------------------
EMB_DIM, EMB_COS, EMB_CLUSTER = 512, 0.95, 1000


def build_embeddings(work: Path, rows: int, groups: int) -> dict:
    """Embedding files of PER_FILE rows under work/ann (made once per size)."""
    import numpy as np

    from recaption.io import embeddings as E

    ann = work / f"emb-{rows}"
    done = ann / "planted.npz"
    if done.exists():
        return {"ann": str(ann), "planted": str(done)}
    rng = np.random.default_rng(0)
    pos = rng.choice(rows, size=groups * 2, replace=False)
    base, member = np.minimum(pos[0::2], pos[1::2]), np.maximum(pos[0::2], pos[1::2])
    order = np.argsort(member)
    base, member = base[order], member[order]
    files = (rows + PER_FILE - 1) // PER_FILE
    for f in range(files):
        start, stop = f * PER_FILE, min(rows, (f + 1) * PER_FILE)
        x = np.random.default_rng(f).standard_normal((stop - start, EMB_DIM), dtype=np.float32)
        own = (base >= start) & (base < stop)
        x[base[own] - start] = _vectors(base[own])  # a base is remade from its position alone
        sel = (member >= start) & (member < stop)
        if sel.any():
            noise = np.random.default_rng(f + 1).normal(scale=0.02, size=(int(sel.sum()), EMB_DIM))
            x[member[sel] - start] = _vectors(base[sel]) + noise.astype(np.float32)
        E.write(str(ann), f"{f:05d}", x, [str(i) for i in range(stop - start)], shard=f"{f:05d}")
    np.savez(done, base=base, member=member)
    return {"ann": str(ann), "planted": str(done)}


def _vectors(positions):
    """Vectors as a function of the row's position alone (a planted member's file remakes its base)."""
    import numpy as np

    out = np.empty((len(positions), EMB_DIM), dtype=np.float32)
    for i, p in enumerate(np.asarray(positions).tolist()):
        out[i] = np.random.default_rng(10_000_019 + p).standard_normal(EMB_DIM, dtype=np.float32)
    return out


def run_semantic(ann: str, planted: str, rows: int) -> dict:
    """One process: the embedding rule as the driver runs it, with its pairs for the recall check."""
    import resource

    import numpy as np

    from recaption.io import embeddings as E
    from recaption.dedup import semantic
    from recaption.dedup.duplicates import DedupConfig, Duplicates, FileKeys

    files = (rows + PER_FILE - 1) // PER_FILE
    found_pairs = {}
    real = semantic.pairs

    def keep_pairs(*a, **kw):
        out = real(*a, **kw)
        found_pairs["pairs"] = out
        return out

    semantic.pairs = keep_pairs
    t0 = time.perf_counter()
    dup = Duplicates(DedupConfig(exact=False, phash_k=None, cosine=EMB_COS, cluster_size=EMB_CLUSTER))
    for f in range(files):
        n = min(PER_FILE, rows - f * PER_FILE)
        dup.add(f, FileKeys(np.arange(n, dtype=np.int32)))
    result = dup.run(embeddings=lambda f: E.read_vectors(ann, f"{f:05d}"))
    wall = time.perf_counter() - t0
    p = np.load(planted)
    got = np.full(rows, -1, dtype=np.int64)
    for f, d in result.files.items():
        got[f * PER_FILE + d.rows] = d.partner_file.astype(np.int64) * PER_FILE + d.partner_row
    a, b, _ = found_pairs["pairs"]
    np.save(Path(planted).with_name("rule_pairs.npy"), np.stack([a, b]))
    return {"rows": rows, "cosine": EMB_COS, "clusters": -(-rows // EMB_CLUSTER), "seconds": round(wall, 1),
            "rows_per_s": round(rows / wall), "planted": int(len(p["member"])),
            "planted_found": int((got[p["member"]] == p["base"]).sum()), "drops": int((got >= 0).sum()),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_brute(ann: str, planted: str, rows: int, queries: int) -> dict:
    """One process: faiss IndexFlatIP over every vector, range search for `queries` rows."""
    import resource

    import faiss
    import numpy as np

    from recaption.io import embeddings as E

    files = (rows + PER_FILE - 1) // PER_FILE
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(EMB_DIM)
    for f in range(files):
        index.add(np.asarray(E.read_vectors(ann, f"{f:05d}"), dtype=np.float32))
    t1 = time.perf_counter()
    rng = np.random.default_rng(1)
    p = np.load(planted)
    q = np.unique(np.concatenate([rng.choice(rows, queries // 2, replace=False),
                                  rng.choice(p["member"], queries - queries // 2, replace=False)]))
    x = np.concatenate([np.asarray(E.read_vectors(ann, f"{f:05d}"), dtype=np.float32)[q[q // PER_FILE == f] % PER_FILE]
                        for f in np.unique(q // PER_FILE)])
    t2 = time.perf_counter()
    lims, dist, idx = index.range_search(x, float(np.nextafter(np.float32(EMB_COS), np.float32(-1))))
    t3 = time.perf_counter()
    qi = np.repeat(q, np.diff(lims.astype(np.int64)))
    keep = (idx != qi) & (dist >= EMB_COS)
    brute = {(min(int(s), int(t)), max(int(s), int(t))) for s, t in zip(qi[keep], idx[keep])}
    rule = np.load(Path(planted).with_name("rule_pairs.npy"))
    qs = set(q.tolist())
    rule_pairs = {(min(int(s), int(t)), max(int(s), int(t))) for s, t in zip(rule[0], rule[1])
                  if int(s) in qs or int(t) in qs}
    search = t3 - t2
    return {"rows": rows, "queries": int(len(q)), "index_s": round(t1 - t0, 1), "search_s": round(search, 1),
            "search_all_rows_s_estimated": round(search * rows / len(q)), "pairs": len(brute),
            "rule_recall": round(len(brute & rule_pairs) / max(1, len(brute)), 4),
            "rule_pairs_not_in_brute": len(rule_pairs - brute),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


# -- driver ------------------------------------------------------------------------------------
def child(fn: str, *args) -> dict:
    """Run one measurement in a fresh interpreter (its own peak RSS)."""
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'scripts')!r}); "
            f"import bench_dedup as b; print(json.dumps(b.{fn}(*json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{fn} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    """Run both measurements; print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--groups", type=int, default=100_000)
    ap.add_argument("--emb-rows", type=int, default=1_000_000)
    ap.add_argument("--emb-groups", type=int, default=10_000)
    ap.add_argument("--brute-queries", type=int, default=4_000)
    ap.add_argument("--work", default=os.environ.get("RECAPTION_BENCH_DIR", "/tmp/recaption-bench-dedup"))
    ap.add_argument("--json", default=str(ROOT / "scripts" / "bench-dedup-results.json"))
    ap.add_argument("--pool-rows", type=int, default=1_000_000)
    ap.add_argument("--pool-groups", type=int, default=10_000)
    ap.add_argument("--only", choices=["fingerprints", "embeddings", "pool"], help="one of the measurements")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores", flush=True)
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "load_before": [round(x, 2) for x in load]}
    if Path(a.json).exists() and a.only:  # one part again: keep the other's last figures
        res = {**json.loads(Path(a.json).read_text()), **res}
    if a.only == "pool":  # its own load figures: the file's top-level ones belong to the other two
        old = json.loads(Path(a.json).read_text()) if Path(a.json).exists() else {}
        res = {**old, "pool": {**run_pool(work, a.pool_rows, a.pool_groups), "load_before": res["load_before"],
                               "load_after": [round(x, 2) for x in os.getloadavg()]}}
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
        print(pool_markdown(res["pool"]))
        return res
    if a.only != "embeddings":
        res["fingerprints"] = child("run_fingerprints", a.rows, a.groups)
        print(json.dumps(res["fingerprints"]), flush=True)
    if a.only != "fingerprints":
        t = time.perf_counter()
        built = build_embeddings(work, a.emb_rows, a.emb_groups)
        res["embedding_files_s"] = round(time.perf_counter() - t, 1)
        res["semantic"] = child("run_semantic", built["ann"], built["planted"], a.emb_rows)
        print(json.dumps(res["semantic"]), flush=True)
        res["brute_force"] = child("run_brute", built["ann"], built["planted"], a.emb_rows, a.brute_queries)
        print(json.dumps(res["brute_force"]), flush=True)
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    print(f"load average after: {res['load_after']}; results in {a.json}\n")
    print(markdown(res))
    return res


# -- 3. the pool pass ---------------------------------------------------------------------------
POOL_CHILD = """
import json, sys, time
from recaption import api
from recaption.engines import Execution
from recaption.mixing.strategies import MixConfig
a = json.loads(sys.argv[1])
t = time.perf_counter()
s = api.mix(a["input"], a["ann"], None, MixConfig(**a["cfg"]), dry_run=True, execution=Execution(quiet=True))
print(json.dumps({"seconds": time.perf_counter() - t, "read": s["counts"]["read"], "written": s["counts"]["written"],
                  "dropped_by_reason": s["counts"]["dropped_by_reason"], "dedup": s.get("dedup")}))
"""


def build_pool(work: Path, rows: int, groups: int) -> tuple[Path, Path, int]:
    """Annotation files with fingerprints and planted groups (built once): folder, shard list,
    planted copies."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import bench_mix

    d, listing = work / f"pool-{rows}-{groups}", work / f"pool-{rows}-{groups}.txt"
    planted = plant(rows, groups, seed=1)
    if (d / "_complete").exists():
        return d, listing, len(planted["member"])
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(rows)
    vocab = bench_mix._words(rng, 20_000)
    files = -(-rows // PER_FILE)
    for f in range(files):
        name = f"{f:05d}"
        t = bench_mix.annotation_table(rng, vocab, name, n=min(PER_FILE, rows - f * PER_FILE))
        k = file_keys(f, rows, planted)
        n = t.num_rows
        t = t.set_column(t.schema.get_field_index("status"), "status", pa.array(["ok"] * n))
        t = t.set_column(t.schema.get_field_index("error"), "error", pa.nulls(n, pa.string()))
        words = np.zeros((n, 32), np.uint8)
        words[:, :8] = k.sha_hi.astype(">u8").view(np.uint8).reshape(n, 8)
        words[:, 8:16] = k.sha_lo.astype(">u8").view(np.uint8).reshape(n, 8)
        sha = pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), n, [None, pa.py_buffer(words.tobytes())])
        meta = json.loads(t.schema.metadata[b"recaption"])
        meta["groups"]["fingerprints"] = {"sha256": "image bytes", "phash": "dct 32x32 -> 8x8, with mirror"}
        t = t.append_column("image_sha256", sha).append_column("phash", pa.array(k.phash, pa.uint64()))
        t = t.append_column("phash_mirror", pa.array(k.mirror, pa.uint64()))
        pq.write_table(t.replace_schema_metadata({b"recaption": json.dumps(meta).encode()}), d / f"{name}.parquet",
                       compression="zstd")
    listing.write_text("".join(f"{work}/pool-shards/{f:05d}.tar\n" for f in range(files)))
    (d / "_complete").write_text("1")
    return d, listing, len(planted["member"])


def run_pool(work: Path, rows: int, groups: int) -> dict:
    """The dry run with and without the duplicate rules, each in fresh processes (median of 3)."""
    import statistics

    import bench_mix

    t = time.perf_counter()
    ann, listing, copies = build_pool(work, rows, groups)
    built = round(time.perf_counter() - t, 1)
    out = {"rows": rows, "planted_groups": groups, "planted_copies": copies, "build_s": built}
    for label, extra in (("without", {}), ("dedup", {"dedup": ["exact", "phash"]})):
        runs = [bench_mix.run_measured({"input": str(listing), "ann": str(ann),
                                        "cfg": {"strategy": "raw", "fraction": 0.3, **extra}}, POOL_CHILD)
                for _ in range(3)]
        secs = statistics.median(r["seconds"] for r in runs)
        out[label] = {"seconds": round(secs, 2), "rows_per_s": round(rows / secs),
                      "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)),
                      "runs": [round(r["seconds"], 2) for r in runs], "dedup": runs[0]["dedup"]}
        print(f"  pool pass {rows:,} rows, {label} dedup: {out[label]['rows_per_s']:,} rows/s, "
              f"peak RSS {out[label]['peak_rss_mb']} MB (runs {out[label]['runs']})", flush=True)
    found = sum(r["dropped"] for r in out["dedup"]["dedup"])
    out["copies_dropped"], out["all_found"] = found, found == copies
    return out


def pool_markdown(p: dict) -> str:
    """The pool pass's figures as a table."""
    rows = ["| `mix --dry-run` (raw, fraction 0.3), {:,} rows | seconds | rows/s | peak RSS |".format(p["rows"]),
            "| --- | ---: | ---: | ---: |"]
    for label, name in (("without", "no duplicate rules"), ("dedup", "`--dedup exact,phash`")):
        r = p[label]
        rows.append(f"| {name} | {r['seconds']} | {r['rows_per_s']:,} | {r['peak_rss_mb']} MB |")
    rows.append(f"\nplanted copies dropped: {p['copies_dropped']:,} of {p['planted_copies']:,}")
    return "\n".join(rows)


def markdown(r: dict) -> str:
    """The figures as a table."""
    f, s, b = r["fingerprints"], r["semantic"], r["brute_force"]
    ok = "yes" if f["groups_found"] == f["planted_groups"] else f"no ({f['groups_found']:,})"
    lines = [
        "| rule | rows | wall | rows/s | peak RSS | planted found |", "| --- | ---: | ---: | ---: | ---: | --- |",
        f"| sha256 + pHash (k={f['k']}), {f['files']:,} files | {f['rows']:,} | {f['rules_s']} s "
        f"(sha256 {f['exact_s']} s, pHash {f['phash_s']} s) | {f['rows_per_s']:,} | {f['peak_rss_mb']} MB | "
        f"{ok}: {f['copies_found']:,} of {f['planted_copies']:,} copies in {f['planted_groups']:,} groups; "
        f"{f['other_drops']} other drops |",
        f"| embedding, cosine >= {s['cosine']}, {s['clusters']:,} clusters | {s['rows']:,} | {s['seconds']} s | "
        f"{s['rows_per_s']:,} | {s['peak_rss_mb']} MB | {s['planted_found']:,} of {s['planted']:,} |",
        f"| brute-force faiss IndexFlatIP, {b['queries']:,} query rows | {b['rows']:,} | {b['search_s']} s "
        f"(+ {b['index_s']} s to load; all rows: ~{b['search_all_rows_s_estimated']:,} s) | - | "
        f"{b['peak_rss_mb']} MB | "
        f"embedding rule's recall of its pairs on those rows: {b['rule_recall']} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
