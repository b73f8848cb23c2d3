#!/usr/bin/env python
"""Benchmark `recaption mix` at DataComp-like scale: dry-run rows/s and peak memory over synthetic
annotation sets, and write MB/s beside a plain `cp` of the same shards.

    python scripts/bench_mix.py                          # 1M and 10M rows, 10,000 real samples
    python scripts/bench_mix.py --rows 1000000 --runs 1  # quicker
    python scripts/bench_mix.py --rows                   # the write benchmark alone

Annotation sets: annotation files of 10,000 rows each (4 to 8 candidates of 6 to 14 words, scores
rounded to 3 decimals so thresholds fall on ties, 10% without alt-text, 1% error rows, the column
groups recorded as annotate records them), built once under --work and reused. Shards: real tar
shards (JPEG, txt, img2dataset json) of about 36 KB a sample, with annotations for their keys that
carry the member index annotate records (`recaption.io.tarindex`), and a copy of them without it
(the writer's fallback: a walk over the tar headers). Each figure is the median of --runs runs,
every run a fresh process (`recaption mix` as a user runs it, minus interpreter start-up); peak
RSS is that process's maximum resident set. The write is also timed warm: one process plans once,
writes the shards once to warm up, then --runs more times (what every output shard after the
first sees in a long mix), with `cp` before each round. Write MB/s is output tar bytes over the write stage's
seconds; `cp` copies the input shards to a fresh folder right before each mix, page cache warm
for both, and dirty pages written out (`sync`) before each; the setups take turns round by round.
With one worker the write stage runs in the measuring process, so its CPU time is also given per
sample: user time (Python, and pyarrow for the parquet) and system time (the kernel copying bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_FILE = 10_000
GROUPS = {  # the column groups a BLIP-2 + CLIP ViT-L/14 + SIEVE annotate pass records
    "captions": {"backend": "hf", "model": "Salesforce/blip2-opt-2.7b", "decoding": {"num_captions": 8}},
    "clip": {"model": "ViT-L-14", "pretrained": "openai"},
    "sieve": {"model": "sentence-transformers/all-MiniLM-L6-v2", "mask": "sieve"},
}
DATA_VERSION = "2"  # bump when the generated files change: older sets are rebuilt
SHARDS_VERSION = "3"  # the same for the real shards and their annotations (3: with the member index)
STRATEGIES = [  # (label, mix arguments)
    ("raw, fraction 0.3", ["--strategy", "raw", "--fraction", "0.3"]),
    ("threshold 0.3 + filter", ["--strategy", "threshold", "--fraction", "0.3", "--filter-synthetic"]),
    ("sieve, fraction 0.2", ["--strategy", "sieve", "--fraction", "0.2"]),
]

CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from recaption import api
from recaption.engines import Execution
from recaption.mixing.strategies import MixConfig
from recaption.stages.write_mix import MixWriteStage
a = json.loads(sys.argv[1])
cfg = MixConfig(**a["cfg"])
cpu = {"user": 0.0, "system": 0.0}
call = MixWriteStage.__call__
def measured(self, *args, **kw):  # in this process only: one worker writes in-process
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        return call(self, *args, **kw)
    finally:
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu["user"] += r1.ru_utime - r0.ru_utime
        cpu["system"] += r1.ru_stime - r0.ru_stime
MixWriteStage.__call__ = measured
t1 = time.perf_counter()
s = api.mix(a["input"], a["ann"], a.get("out"), cfg, dry_run=a["dry"], overlay=a.get("overlay", False),
            execution=Execution(quiet=True, workers=a.get("workers")))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "seconds": t2 - t1, "read": s["counts"]["read"],
                  "written": s["counts"]["written"], "stage_seconds": s.get("seconds"), "write_cpu": cpu}))
"""


def _cfg(args: list[str]) -> dict:
    cfg, it = {}, iter(args)
    for a in it:
        k = a.lstrip("-").replace("-", "_")
        if k == "filter_synthetic":
            cfg[k] = True
        else:
            v = next(it)
            cfg[k] = float(v) if k in ("fraction", "threshold", "alpha") else int(v) if k == "samples_per_shard" else v
    return cfg


def run_measured(spec: dict, child: str = CHILD) -> dict:
    """One mix (or another `child` program) in a fresh process: its own timing (imports excluded),
    and its peak RSS (wait4)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r_fd, w_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r_fd)
        os.dup2(w_fd, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.execve(sys.executable, [sys.executable, "-c", child, json.dumps(spec)], env)
    os.close(w_fd)
    with os.fdopen(r_fd) as f:
        out = f.read()
    _, status, ru = os.wait4(pid, 0)
    if not out.strip():
        raise SystemExit(f"benchmark child failed (status {status}) for {spec}")
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_rss_mb"] = ru.ru_maxrss / 1024
    return r


# -- data ----------------------------------------------------------------------------------
def _words(rng, n: int):
    import pyarrow as pa

    letters = rng.integers(97, 123, size=(n, 9), dtype="uint8")
    lens = rng.integers(2, 10, size=n)
    return pa.array([bytes(letters[i, : lens[i]]).decode() for i in range(n)])


def _texts(rng, vocab, n: int, lo: int, hi: int):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    k = rng.integers(lo, hi + 1, size=n)
    off = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(k, out=off[1:])
    words = vocab.take(pa.array(rng.integers(0, len(vocab), size=int(off[-1]))))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(off), words), " ")


def annotation_table(rng, vocab, name: str, keys: list[str] | None = None, n: int = ROWS_PER_FILE):
    """One annotation file's table, random but shaped like a real one."""
    import numpy as np
    import pyarrow as pa

    from recaption.io.annotations import SCHEMA

    n = len(keys) if keys is not None else n
    nc = rng.integers(4, 9, size=n)
    off = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(nc, out=off[1:])
    caps = pa.ListArray.from_arrays(pa.array(off), _texts(rng, vocab, int(off[-1]), 6, 14))
    f32 = lambda x: np.round(x, 3).astype(np.float32)  # noqa: E731 - 3 decimals: ties, as real scores
    clips = pa.ListArray.from_arrays(pa.array(off), pa.array(f32(rng.normal(0.3, 0.05, int(off[-1])))))
    no_raw = rng.random(n) < 0.1
    err = rng.random(n) < 0.01
    raw = _texts(rng, vocab, n, 3, 16)
    raw = pa.array(raw.to_numpy(zero_copy_only=False), mask=no_raw)
    clip_raw = pa.array(f32(rng.normal(0.28, 0.06, n)), mask=no_raw)
    sieve = pa.array(f32(np.clip(rng.normal(0.45, 0.15, n), 0, 1)), mask=no_raw)
    keys = keys or [f"{name}{i:05d}" for i in range(n)]
    meta = {"format_version": 1, "groups": GROUPS}  # what annotate records: the settings of each group
    return pa.table({
        "key": pa.array(keys), "shard": pa.array([name] * n), "raw_caption": raw, "captions": caps,
        "captioner": pa.array(["Salesforce/blip2-opt-2.7b"] * n), "clip_raw": clip_raw, "clip_captions": clips,
        "sieve": sieve, "sieve_mean": sieve, "sieve_best": raw,
        "status": pa.array(np.where(err, "error", "ok")),
        "error": pa.array(np.where(err, "caption: CUDA out of memory", None), pa.string()),
    }, schema=SCHEMA).replace_schema_metadata({b"recaption": json.dumps(meta, sort_keys=True).encode()})


def build_annotations(work: Path, rows: int) -> tuple[Path, Path]:
    """WORK/ann-ROWS/NNNNN.parquet and a shard list naming NNNNN.tar (the tars need not exist
    for a dry run). Built once."""
    import numpy as np
    import pyarrow.parquet as pq

    d = work / f"ann-{rows}"
    listing = work / f"shards-{rows}.txt"
    n_files = rows // ROWS_PER_FILE
    if (d / "_complete").exists() and (d / "_complete").read_text() == DATA_VERSION:
        return d, listing
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(rows)
    vocab = _words(rng, 20_000)
    t0 = time.time()
    for i in range(n_files):
        name = f"{i:05d}"
        pq.write_table(annotation_table(rng, vocab, name), d / f"{name}.parquet", compression="zstd")
        if i % 100 == 99:
            print(f"  annotations {rows:,}: {i + 1}/{n_files} files ({time.time() - t0:.0f}s)", flush=True)
    listing.write_text("".join(f"{work}/shards-{rows}/{i:05d}.tar\n" for i in range(n_files)))
    (d / "_complete").write_text(DATA_VERSION)
    return d, listing


def build_shards(work: Path, samples: int, per_shard: int) -> tuple[Path, Path]:
    """Real tar shards of ~36 KB samples (noise JPEG, alt-text, img2dataset json) and their
    annotations. Built once."""
    import io
    import random
    import tarfile

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from recaption.io.writer import add_member

    d, a = work / "shards", work / "shards-ann"
    if (d / "_complete").exists() and (d / "_complete").read_text() == SHARDS_VERSION:
        return d, a
    d.mkdir(parents=True, exist_ok=True)
    a.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (176, 176, 3), dtype=np.uint8)).save(buf, "JPEG", quality=92)
        jpegs.append(buf.getvalue())
    vocab = _words(rng, 20_000)
    r = random.Random(0)
    for s in range(samples // per_shard):
        name = f"{s:05d}"
        keys = [f"{name}{i:04d}" for i in range(per_shard)]
        with tarfile.open(d / f"{name}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for k in keys:
                alt = f"a photo of item {k} on a table"
                meta = {"url": f"https://example.com/{k}.jpg", "caption": alt, "key": k, "status": "success",
                        "error_message": None, "width": 176, "height": 176, "original_width": 704,
                        "original_height": 704, "exif": "{}", "sha256": f"{r.getrandbits(256):064x}"}
                add_member(tar, f"{k}.jpg", jpegs[r.randrange(len(jpegs))])
                add_member(tar, f"{k}.txt", alt.encode())
                add_member(tar, f"{k}.json", json.dumps(meta).encode())
        pq.write_table(indexed(annotation_table(rng, vocab, name, keys), d / f"{name}.tar"), a / f"{name}.parquet",
                       compression="zstd")
    (d / "_complete").write_text(SHARDS_VERSION)
    return d, a


def unindexed(work: Path, ann: Path) -> Path:
    """A copy of the shards' annotation files without the member index (as files written before
    it existed): the writer falls back to walking the tar headers. Built once."""
    import pyarrow.parquet as pq

    from recaption.io import tarindex

    d = work / "shards-ann-noindex"
    if (d / "_complete").exists() and (d / "_complete").read_text() == SHARDS_VERSION:
        return d
    d.mkdir(parents=True, exist_ok=True)
    for f in sorted(ann.glob("*.parquet")):
        t = pq.read_table(f)
        meta = json.loads(t.schema.metadata[b"recaption"])
        meta["groups"].pop(tarindex.GROUP, None)
        t = t.drop_columns(list(tarindex.NAMES))
        pq.write_table(t.replace_schema_metadata({b"recaption": json.dumps(meta, sort_keys=True).encode()}),
                       d / f.name, compression="zstd")
    (d / "_complete").write_text(SHARDS_VERSION)
    return d


def indexed(t, shard: Path):
    """An annotation table with the shard's member index, as annotate records it (read here by the
    same reader), and the shard's identity in its metadata."""
    import pyarrow as pa

    from recaption.io import tarindex
    from recaption.io.shards import iter_shard

    fields = [r.index_fields() for r in iter_shard(str(shard))]
    for name, typ in tarindex.COLUMNS:
        t = t.append_column(name, pa.array([f[name] for f in fields], typ))
    meta = json.loads(t.schema.metadata[b"recaption"])
    meta["groups"][tarindex.GROUP] = tarindex.identity(str(shard))
    return t.replace_schema_metadata({b"recaption": json.dumps(meta, sort_keys=True).encode()})


# -- measurements ----------------------------------------------------------------------------
def bench_dry_run(ann: Path, listing: Path, rows: int, runs: int) -> list[dict]:
    out = []
    for label, args in STRATEGIES:
        res = [run_measured({"input": str(listing), "ann": str(ann), "cfg": _cfg(args), "dry": True})
               for _ in range(runs)]
        secs = statistics.median(r["seconds"] for r in res)
        rss = max(r["peak_rss_mb"] for r in res)
        out.append({"rows": rows, "strategy": label, "seconds": round(secs, 3),
                    "rows_per_s": round(res[0]["read"] / secs), "peak_rss_mb": round(rss),
                    "runs": [round(r["seconds"], 3) for r in res]})
        print(f"  dry run {rows:>11,} rows  {label:24s} {out[-1]['rows_per_s']:>12,} rows/s  "
              f"peak RSS {out[-1]['peak_rss_mb']:>5} MB  (runs {out[-1]['runs']})", flush=True)
    return out


def _tar_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.tar"))


WARM_CHILD = """
import json, os, resource, shutil, subprocess, sys, time
from pathlib import Path
from recaption.mixing.plan import plan, plan_dict
from recaption.mixing.pool import pool_pass
from recaption.mixing.strategies import MixConfig
from recaption.stages.write_mix import MixWriteStage
a = json.loads(sys.argv[1])
cfg, out, dst = MixConfig(**a["cfg"]), Path(a["out"]), Path(a["cp_out"])
out.mkdir(parents=True, exist_ok=True)
plans, _ = plan(pool_pass(a["shards"], a["ann"], cfg), cfg, str(out))
res = []
for r in range(a["runs"] + 1):  # the first round warms the process up and is not counted
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    os.sync()
    t0 = time.perf_counter()
    subprocess.run(["cp", *a["shards"], str(dst)], check=True)
    cp = time.perf_counter() - t0
    shutil.rmtree(dst)
    for f in out.glob("0*"):
        f.unlink()
    os.sync()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    n = sum(MixWriteStage()(plan_dict(p)).samples for p in plans)
    w = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    size = sum(f.stat().st_size for f in out.glob("*.tar"))
    res.append({"cp": cp, "write": w, "n": n, "bytes": size, "user": r1.ru_utime - r0.ru_utime,
                "system": r1.ru_stime - r0.ru_stime})
print(json.dumps(res[1:]))
"""


def bench_write_warm(work: Path, shards: Path, ann: Path, runs: int, per_shard: int = 2500) -> dict:
    """The write stage again in a process that has written the shards once already (what each
    output shard after the first sees in a long mix): no start-up, imports or first allocations;
    `cp` before each round, from the same process."""
    tars = [str(p) for p in sorted(shards.glob("*.tar"))]
    size = _tar_bytes(shards)
    args = ["--strategy", "threshold", "--fraction", "0.3", "--samples-per-shard", str(per_shard)]
    out = work / "mix-warm"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    spec = {"shards": tars, "ann": str(ann), "cfg": _cfg(args), "out": str(out), "cp_out": str(work / "cp-warm"),
            "runs": runs}
    done = subprocess.run([sys.executable, "-c", WARM_CHILD, json.dumps(spec)], env=env, check=True,
                          capture_output=True, text=True)
    rounds = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    n, out_bytes = rounds[0]["n"], rounds[0]["bytes"]
    cp_mbs = size / 1e6 / statistics.median(r["cp"] for r in rounds)
    w_mbs = out_bytes / 1e6 / statistics.median(r["write"] for r in rounds)
    res = {"path": "member index, warm process", "input_mb": round(size / 1e6, 1),
           "output_mb": round(out_bytes / 1e6, 1),
           "samples": n, "workers": 1, "cp_mb_s": round(cp_mbs), "write_mb_s": round(w_mbs),
           "write_vs_cp": round(w_mbs / cp_mbs, 2), "cp_runs": [round(r["cp"], 3) for r in rounds],
           "write_runs": [round(r["write"], 3) for r in rounds],
           "user_us_per_sample": round(statistics.median(r["user"] for r in rounds) / n * 1e6, 1),
           "system_us_per_sample": round(statistics.median(r["system"] for r in rounds) / n * 1e6, 1)}
    print(f"  write, member index, warm process: {res['write_mb_s']} MB/s write stage; cp {res['cp_mb_s']} MB/s -> "
          f"{res['write_vs_cp']}x of cp; CPU a sample {res['user_us_per_sample']} us user, "
          f"{res['system_us_per_sample']} us system", flush=True)
    return res


def _cp_once(work: Path, tars: list[str]) -> float:
    dst = work / "cp-out"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    os.sync()  # no dirty pages of the step before are written back during this one
    t0 = time.perf_counter()
    subprocess.run(["cp", *tars, str(dst)], check=True)
    took = time.perf_counter() - t0
    shutil.rmtree(dst)
    return took


def bench_writes(work: Path, shards: Path, setups: list[tuple[str, Path, int]], runs: int,
                 per_shard: int = 2500) -> list[dict]:
    """Each setup (label, annotation folder, workers) `runs` times, the setups taking turns round by
    round (on a shared machine the state of memory drifts: no setup gets all the good minutes),
    each mix right after a `cp` of the same shards."""
    size = _tar_bytes(shards)
    tars = [str(p) for p in sorted(shards.glob("*.tar"))]
    for p in tars:  # warm the page cache for both
        Path(p).read_bytes()
    # keeps every sample with a candidate; four output shards, so that two workers have work
    args = ["--strategy", "threshold", "--fraction", "0.3", "--samples-per-shard", str(per_shard)]
    got = {(label, w): {"cp": [], "write": [], "mix": [], "user": [], "system": []} for label, _, w in setups}
    sizes = {}
    for _ in range(runs):
        for label, ann, workers in setups:
            g = got[label, workers]
            g["cp"].append(_cp_once(work, tars))
            out = work / "mix-out"
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            r = run_measured({"input": str(shards), "ann": str(ann), "out": str(out), "cfg": _cfg(args),
                              "dry": False, "workers": workers})
            g["write"].append(r["stage_seconds"]["write"])
            g["mix"].append(r["seconds"])
            g["user"].append(r["write_cpu"]["user"])
            g["system"].append(r["write_cpu"]["system"])
            sizes[label, workers] = (_tar_bytes(out), r["written"])
            shutil.rmtree(out)
    results = []
    for label, _, workers in setups:
        g, (out_bytes, n) = got[label, workers], sizes[label, workers]
        cp_mbs = size / 1e6 / statistics.median(g["cp"])
        w_mbs = out_bytes / 1e6 / statistics.median(g["write"])
        t_mbs = out_bytes / 1e6 / statistics.median(g["mix"])
        res = {"path": label, "input_mb": round(size / 1e6, 1), "output_mb": round(out_bytes / 1e6, 1),
               "samples": n, "workers": workers, "cp_mb_s": round(cp_mbs), "write_mb_s": round(w_mbs),
               "mix_mb_s": round(t_mbs), "write_vs_cp": round(w_mbs / cp_mbs, 2),
               "mix_vs_cp": round(t_mbs / cp_mbs, 2), "cp_runs": [round(x, 3) for x in g["cp"]],
               "write_runs": [round(x, 3) for x in g["write"]], "mix_runs": [round(x, 3) for x in g["mix"]]}
        cpu = ""
        if workers == 1:  # the stage ran in the measured process: its CPU time a sample
            res["user_us_per_sample"] = round(statistics.median(g["user"]) / n * 1e6, 1)
            res["system_us_per_sample"] = round(statistics.median(g["system"]) / n * 1e6, 1)
            cpu = f"; CPU a sample {res['user_us_per_sample']} us user, {res['system_us_per_sample']} us system"
        print(f"  write, {label} ({workers} worker{'s' if workers > 1 else ''}): {res['write_mb_s']} MB/s write "
              f"stage, {res['mix_mb_s']} MB/s whole mix; cp {res['cp_mb_s']} MB/s -> {res['write_vs_cp']}x of cp "
              f"(whole mix {res['mix_vs_cp']}x){cpu}", flush=True)
        results.append(res)
    return results


def start(work_dir: str) -> tuple[Path, dict]:
    """The work folder, made, and a result that names the machine and its load as the run starts."""
    sys.path.insert(0, str(ROOT))
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores", flush=True)
    return work, {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                  "load_before": [round(x, 2) for x in load]}


def finish(result: dict, json_path: str, markdown) -> dict:
    """Record the load as the run ends, write the JSON and print the README tables."""
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average after: {result['load_after']}; results in {json_path}\n")
    print(markdown(result))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000],
                    help="annotation rows of the dry-run sets (none: the write benchmark alone)")
    ap.add_argument("--samples", type=int, default=10_000, help="real samples for the write benchmark")
    ap.add_argument("--per-shard", type=int, default=2_500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", default=os.environ.get("RECAPTION_BENCH_DIR", "/tmp/recaption-bench-mix"))
    ap.add_argument("--json", default=str(ROOT / "scripts" / "bench-mix-results.json"))
    a = ap.parse_args(argv)
    if a.samples < a.per_shard:
        ap.error(f"--samples {a.samples} is fewer than one shard of --per-shard {a.per_shard}")
    work, result = start(a.work)
    result.update(dry_run=[], write=[])
    for rows in a.rows:
        ann, listing = build_annotations(work, rows)
        result["dry_run"] += bench_dry_run(ann, listing, rows, a.runs)
    shards, sann = build_shards(work, a.samples, a.per_shard)
    setups = [("member index", sann, w) for w in a.workers] + [("fallback: no index", unindexed(work, sann), 1)]
    result["write"] = bench_writes(work, shards, setups, a.runs, a.per_shard)
    result["write"].append(bench_write_warm(work, shards, sann, a.runs, a.per_shard))
    return finish(result, a.json, markdown)


def markdown(r: dict) -> str:
    """The figures as README tables."""
    lines = ["| dry run | rows | rows/s | peak RSS |", "| --- | ---: | ---: | ---: |"]
    for d in r["dry_run"]:
        lines.append(f"| {d['strategy']} | {d['rows']:,} | {d['rows_per_s']:,} | {d['peak_rss_mb']} MB |")
    lines += ["", "| write, 10,000 samples | MB/s | `cp` MB/s | vs `cp` | CPU a sample (user + system) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for w in r["write"]:
        n = f"{w['workers']} process{'es' if w['workers'] > 1 else ''}"
        cpu = (f"{w['user_us_per_sample']} + {w['system_us_per_sample']} us" if "user_us_per_sample" in w else "")
        lines.append(f"| write stage, {w.get('path', 'member index')}, {n} | {w['write_mb_s']} | {w['cp_mb_s']} | "
                     f"{w['write_vs_cp']}x | {cpu} |")
        if "mix_mb_s" in w:
            lines.append(f"| whole mix (pool pass, plan, write), {n} | {w['mix_mb_s']} | {w['cp_mb_s']} | "
                         f"{w['mix_vs_cp']}x | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
