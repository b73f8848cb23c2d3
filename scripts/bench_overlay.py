#!/usr/bin/env python
"""Benchmark the caption overlay: `recaption mix --overlay` against a full `mix -o` on the same
shards and against a dry run, and reading the input shards through the overlay
(`recaption.webdataset`) against reading them plain.

    python scripts/bench_overlay.py                  # 20,000 real samples, 1M annotation rows
    python scripts/bench_overlay.py --runs 3 --no-ray

Data as `scripts/bench_mix.py` builds it (real tar shards of about 36 KB a sample: noise JPEG,
alt-text, img2dataset json; synthetic annotation sets of 10,000-row files), under --work, built
once. Every figure is the median of --runs runs, each a fresh process (interpreter start-up and
imports excluded; Ray's start-up too), page cache warm; reads alternate plain and overlay runs so
that drift in the machine's load hits both. Reads go through every input sample without decoding
images (the overlay's share is largest there): `wds.WebDataset(urls, shardshuffle=False)`, with
`.compose(overlay(folder))` for the overlay; Ray Data `read_webdataset(urls, decoder=None,
override_num_blocks=len(urls))` (a block per shard, so that the overlay is fused into the read
tasks, as `recaption.webdataset.ray_dataset` reads), with `.map_batches(RayOverlay(folder),
batch_format="pandas")`, iterated by batches.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_mix as bm  # noqa: E402  (the data builders and the fresh-process runner)

MIX = ["--strategy", "both", "--samples-per-shard", "2500"]  # keeps most samples: the most work a sample

WDS_CHILD = """
import json, sys, time
a = json.loads(sys.argv[1])
import webdataset as wds
from recaption.webdataset import overlay
ds = wds.WebDataset(a["urls"], shardshuffle=False)
t0 = time.perf_counter()
if a["overlay"]:  # once per process, apart: checks the folder, imports what pyarrow needs
    ds = ds.compose(overlay(a["overlay"]))
t1, c1 = time.perf_counter(), time.process_time()
n = sum(1 for _ in ds)
print(json.dumps({"seconds": time.perf_counter() - t1, "cpu": time.process_time() - c1, "setup": t1 - t0,
                  "yielded": n}))
"""

# the overlay's own cost, apart from reading: samples read once into memory, then the stage
# applied to fresh copies of them, alternating with a plain pass over the same copies (per sample,
# CPU seconds; best of the rounds, since noise only ever adds)
APPLY_CHILD = """
import json, sys, time
a = json.loads(sys.argv[1])
import webdataset as wds
from recaption.webdataset import overlay
t0 = time.process_time()
samples = list(wds.WebDataset(a["urls"], shardshuffle=False))
read = time.process_time() - t0
plain, over = [], []
for _ in range(a["rounds"]):
    copies = [dict(s) for s in samples]
    c = time.process_time(); sum(1 for _ in iter(copies)); plain.append(time.process_time() - c)
    stage = overlay(a["overlay"])  # a fresh reader: every shard's decisions loaded again
    copies = [dict(s) for s in samples]
    c = time.process_time(); n = sum(1 for _ in stage(iter(copies))); over.append(time.process_time() - c)
print(json.dumps({"samples": len(samples), "yielded": n, "read_cpu": read, "plain_cpu": min(plain),
                  "overlay_cpu": min(over)}))
"""

RAY_CHILD = """
import json, sys, tempfile, time
a = json.loads(sys.argv[1])
import ray, ray.data
ray.init(num_cpus=a["cpus"], include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp())
ray.data.DataContext.get_current().enable_progress_bars = False
from recaption.webdataset import RayOverlay
ray.data.read_webdataset(a["urls"][:1], decoder=None).take(1)  # workers started before the clock
t0 = time.perf_counter()
# a block per shard, as recaption.webdataset.ray_dataset reads: the overlay runs in the read tasks
ds = ray.data.read_webdataset(a["urls"], decoder=None, override_num_blocks=len(a["urls"]))
if a["overlay"]:
    ds = ds.map_batches(RayOverlay(a["overlay"]), batch_format="pandas")
n = sum(len(b) for b in ds.iter_batches(batch_size=None, batch_format="pandas"))
print(json.dumps({"seconds": time.perf_counter() - t0, "yielded": n}))
"""


def _median(rs: list[dict], k: str = "seconds") -> float:
    return statistics.median(r[k] for r in rs)


SPECS = {"full": {"dry": False}, "overlay": {"dry": False, "overlay": True}, "dry_run": {"dry": True}}


def _mix_runs(prefix: Path, input_spec: str, ann: Path, runs: int, labels) -> dict:
    """Each kind of mix `runs` times in fresh processes, into `PREFIX-LABEL` folders made anew."""
    cfg, res = bm._cfg(MIX), {}
    for label in labels:
        rs = []
        for _ in range(runs):
            out = prefix.parent / f"{prefix.name}-{label}"
            shutil.rmtree(out, ignore_errors=True)
            rs.append(bm.run_measured({"input": input_spec, "ann": str(ann), "cfg": cfg,
                                       "out": None if SPECS[label]["dry"] else str(out), **SPECS[label]}))
        res[label] = {"seconds": round(_median(rs), 3), "runs": [round(r["seconds"], 3) for r in rs],
                      "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rs)), "read": rs[0].get("read")}
    return res


def bench_mixes(work: Path, shards: Path, ann: Path, runs: int) -> dict:
    """Full mix, overlay and dry run over the same real shards."""
    res = _mix_runs(work / "mix", str(shards), ann, runs, ("full", "overlay", "dry_run"))
    print(f"  mix of {res['full']['read']:,} samples: full {res['full']['seconds']} s, overlay "
          f"{res['overlay']['seconds']} s, dry run {res['dry_run']['seconds']} s", flush=True)
    return res


def bench_pool(work: Path, rows: int, runs: int) -> dict:
    """Overlay against a dry run over a large annotation set (the shards are empty placeholders:
    an overlay reads only their size and mtime)."""
    ann, listing = bm.build_annotations(work, rows)
    for url in listing.read_text().split():
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        Path(url).touch()
    res = _mix_runs(work / "pool", str(listing), ann, runs, ("overlay", "dry_run"))
    res["rows"] = rows
    decisions = (work / "pool-overlay" / "_decisions").iterdir()
    res["decisions_mb"] = round(sum(p.stat().st_size for p in decisions) / 1e6, 1)
    print(f"  {rows:,} annotation rows: overlay {res['overlay']['seconds']} s "
          f"({res['decisions_mb']} MB of decisions), dry run {res['dry_run']['seconds']} s", flush=True)
    return res


def bench_read(urls: list[str], folder: str, runs: int, child: str, label: str, extra: dict | None = None) -> dict:
    """Plain and overlay reads, alternating, each run a fresh process."""
    plain, over = [], []
    for _ in range(runs):
        plain.append(bm.run_measured({"urls": urls, "overlay": None, **(extra or {})}, child))
        over.append(bm.run_measured({"urls": urls, "overlay": folder, **(extra or {})}, child))
    tp, to = _median(plain), _median(over)
    bp, bo = min(r["seconds"] for r in plain), min(r["seconds"] for r in over)
    n = plain[0]["yielded"]
    res = {"samples": n, "yielded_with_overlay": over[0]["yielded"],
           "plain_samples_per_s": round(n / tp), "overlay_samples_per_s": round(n / to),
           "overhead_pct": round(100 * (to / tp - 1), 1),
           "overhead_pct_best_runs": round(100 * (bo / bp - 1), 1),  # fastest against fastest: least noise
           "plain_runs": [round(r["seconds"], 3) for r in plain],
           "overlay_runs": [round(r["seconds"], 3) for r in over],
           **_cpu_overhead(plain, over),
           "overlay_setup_s": round(statistics.median(r.get("setup", 0.0) for r in over), 3),
           "plain_peak_rss_mb": round(max(r["peak_rss_mb"] for r in plain)),
           "overlay_peak_rss_mb": round(max(r["peak_rss_mb"] for r in over))}
    cpu = f", CPU time {res['overhead_pct_cpu']}%" if "overhead_pct_cpu" in res else ""
    print(f"  {label}: plain {res['plain_samples_per_s']:,} input samples/s, overlay "
          f"{res['overlay_samples_per_s']:,} -> overhead {res['overhead_pct']}% (fastest runs "
          f"{res['overhead_pct_best_runs']}%{cpu}) "
          f"(peak RSS {res['plain_peak_rss_mb']} / {res['overlay_peak_rss_mb']} MB)", flush=True)
    return res


def bench_apply(urls: list[str], folder: str, rounds: int = 5) -> dict:
    """The overlay stage's CPU time per sample, samples already in memory, against what reading
    them took: the overhead the stage adds to a read, free of the read's own run-to-run noise."""
    r = bm.run_measured({"urls": urls, "overlay": folder, "rounds": rounds}, APPLY_CHILD)
    n = r["samples"]
    res = {"samples": n, "read_us_per_sample": round(1e6 * r["read_cpu"] / n, 1),
           "overlay_us_per_sample": round(1e6 * (r["overlay_cpu"] - r["plain_cpu"]) / n, 1)}
    res["overhead_pct"] = round(100 * res["overlay_us_per_sample"] / res["read_us_per_sample"], 1)
    print(f"  overlay stage alone: {res['overlay_us_per_sample']} us a sample (decisions loads included) "
          f"against {res['read_us_per_sample']} us to read it -> {res['overhead_pct']}%", flush=True)
    return res


def _cpu_overhead(plain: list[dict], over: list[dict]) -> dict:
    """The reading process's CPU seconds, where the child reports them (one process reads): what the
    overlay costs, little moved by other work on the machine, unlike wall time."""
    if "cpu" not in plain[0]:
        return {}
    cp, co = _median(plain, "cpu"), _median(over, "cpu")
    return {"overhead_pct_cpu": round(100 * (co / cp - 1), 1), "plain_cpu_runs": [round(r["cpu"], 3) for r in plain],
            "overlay_cpu_runs": [round(r["cpu"], 3) for r in over]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--per-shard", type=int, default=2_500)
    ap.add_argument("--rows", type=int, default=1_000_000, help="annotation rows for overlay vs dry run (0: skip)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--read-runs", type=int, default=7, help="plain and overlay reads, each")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--work", default=os.environ.get("RECAPTION_BENCH_DIR", "/tmp/recaption-bench-overlay"))
    ap.add_argument("--json", default=str(ROOT / "scripts" / "bench-overlay-results.json"))
    a = ap.parse_args(argv)
    if a.samples < a.per_shard:
        ap.error(f"--samples {a.samples} is fewer than one shard of --per-shard {a.per_shard}")
    work, result = bm.start(a.work)
    result["mix_args"] = MIX
    shards, sann = bm.build_shards(work, a.samples, a.per_shard)
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    result["input_mb"] = round(sum(Path(u).stat().st_size for u in urls) / 1e6, 1)
    for u in urls:  # page cache warm for every run
        Path(u).read_bytes()
    result["mix"] = bench_mixes(work, shards, sann, a.runs)
    folder = str(work / "mix-overlay")
    result["read_webdataset"] = bench_read(urls, folder, a.read_runs, WDS_CHILD, "webdataset")
    result["overlay_cost"] = bench_apply(urls, folder)
    if not a.no_ray:
        result["read_ray"] = bench_read(urls, folder, max(1, a.read_runs // 2), RAY_CHILD, "Ray Data",
                                        {"cpus": os.cpu_count()})
    if a.rows:
        result["pool"] = bench_pool(work, a.rows, a.runs)
    return bm.finish(result, a.json, markdown)


def markdown(r: dict) -> str:
    """The figures as README tables."""
    m = r["mix"]
    lines = [f"| {m['full']['read']:,} samples ({r['input_mb']:,} MB), `{' '.join(r['mix_args'])}` | seconds |",
             "| --- | ---: |",
             f"| `mix -o` (pool pass, decisions, tars) | {m['full']['seconds']} |",
             f"| `mix --overlay` (pool pass, decisions) | {m['overlay']['seconds']} |",
             f"| `mix --dry-run` (pool pass) | {m['dry_run']['seconds']} |"]
    if "pool" in r:
        p = r["pool"]
        lines += [f"| {p['rows']:,} annotation rows: `mix --overlay` ({p['decisions_mb']} MB of decisions) | "
                  f"{p['overlay']['seconds']} |",
                  f"| {p['rows']:,} annotation rows: `mix --dry-run` | {p['dry_run']['seconds']} |"]
    lines += ["", "| reading every input sample | plain samples/s | with the overlay | overhead (medians) | "
                  "fastest runs | CPU time (medians) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, label in (("read_webdataset", "webdataset, one process"), ("read_ray", "Ray Data")):
        if key in r:
            x = r[key]
            lines.append(f"| {label} | {x['plain_samples_per_s']:,} | {x['overlay_samples_per_s']:,} | "
                         f"{x['overhead_pct']}% | {x['overhead_pct_best_runs']}% | "
                         f"{str(x['overhead_pct_cpu']) + '%' if 'overhead_pct_cpu' in x else 'n/a'} |")
    if "overlay_cost" in r:
        c = r["overlay_cost"]
        lines += ["", f"The overlay stage alone, on the {c['samples']:,} samples held in memory: "
                      f"{c['overlay_us_per_sample']} µs of CPU a sample, decisions loads included, against "
                      f"{c['read_us_per_sample']} µs to read it: **{c['overhead_pct']}%**."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
