#!/usr/bin/env python
"""What the filter metrics (language, caption length, image sizes, image bytes) cost `annotate`.

Annotates the bundled sample shards as `make demo` does (tiny random-weight BLIP and CLIP, the
real all-MiniLM-L6-v2), in fresh folders, and compares the time spent on the metrics (the
`metrics` stage: per-sample measures and one fastText call per caption of a batch, plus loading
the language model once per worker) with annotate's wall time. Tiny models make annotate as cheap
as it gets, so the share is an upper bound: real captioners take far longer per sample.

    python scripts/bench_metrics.py [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    """Run the measurement; print it and return it (and write it with --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args(argv)

    from recaption import api
    from recaption.captioners.base import load_preset
    from recaption.demo import tiny_model_dir
    from recaption.engines import Execution
    from recaption.resources import sample_shards_dir
    from recaption.scoring.clip import ClipConfig
    from recaption.scoring.language import LanguageId
    from recaption.scoring.sieve import SieveConfig
    from recaption.demo.tiny_models import build_all

    models = build_all(tiny_model_dir())
    shards = str(sample_shards_dir())
    runs = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        LanguageId()  # what each worker's setup adds (not inside the stage timers)
        load = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as d:
            s = api.annotate(shards, str(Path(d) / "ann"),
                             captions=load_preset("sieve", model=models["blip"], num_captions=4, max_length=12),
                             clip=ClipConfig(model=models["clip"]), sieve=SieveConfig(api.default_sieve_model()),
                             execution=Execution(workers=1, quiet=True))
        metrics = s["stage_seconds"].get("metrics", 0.0) + load
        runs.append({"wall_s": s["seconds"], "metrics_s": round(metrics, 4), "lid_load_s": round(load, 4),
                     "samples": s["samples"], "share": metrics / s["seconds"]})
    res = {"samples": runs[0]["samples"], "runs": runs,
           "median_wall_s": statistics.median(r["wall_s"] for r in runs),
           "median_metrics_s": statistics.median(r["metrics_s"] for r in runs),
           "median_share": statistics.median(r["share"] for r in runs), "target_share": 0.05}
    print(f"annotate on the bundled shards ({res['samples']} samples, tiny models, {a.repeats} runs):")
    print(f"  wall {res['median_wall_s']:.2f} s, filter metrics {res['median_metrics_s']:.3f} s "
          f"(language model load included): {100 * res['median_share']:.2f}% (target <= 5%)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
