#!/usr/bin/env python
"""What the always-on groups cost `annotate`: the filter metrics (language, caption length, image
sizes, image bytes) and the image fingerprints (sha256, pHash and mirrored pHash).

Annotates the bundled sample shards as `make demo` does (tiny random-weight BLIP and CLIP, the
real all-MiniLM-L6-v2), in fresh folders, and compares with annotate's wall time the time spent on
the metrics (the `metrics` stage: per-sample measures and one fastText call per caption of a batch,
plus loading the language model once per worker) and on the fingerprints (the `fingerprints`
stage: sha256 of each image's bytes and the DCT hash of its 32x32 pixels; plus the 32x32 resize
the decode does for it, which runs in the decode workers outside any stage timer, so it is timed
here on the same images, decoded as that pass decodes them). Tiny models make annotate as cheap
as it gets, so the shares are upper bounds: real captioners take far longer per sample.

    python scripts/bench_metrics.py [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
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
    resize = fingerprint_resize_seconds(shards, models["clip"])
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
        fingerprints = s["stage_seconds"].get("fingerprints", 0.0) + resize
        runs.append({"wall_s": s["seconds"], "metrics_s": round(metrics, 4), "lid_load_s": round(load, 4),
                     "fingerprints_s": round(fingerprints, 4), "fingerprint_resize_s": round(resize, 4),
                     "samples": s["samples"], "share": metrics / s["seconds"],
                     "fingerprint_share": fingerprints / s["seconds"]})
    res = {"samples": runs[0]["samples"], "runs": runs, "load_average": [round(x, 2) for x in os.getloadavg()],
           "median_wall_s": statistics.median(r["wall_s"] for r in runs),
           "median_metrics_s": statistics.median(r["metrics_s"] for r in runs),
           "median_share": statistics.median(r["share"] for r in runs), "target_share": 0.05,
           "median_fingerprints_s": statistics.median(r["fingerprints_s"] for r in runs),
           "median_fingerprint_share": statistics.median(r["fingerprint_share"] for r in runs)}
    print(f"annotate on the bundled shards ({res['samples']} samples, tiny models, {a.repeats} runs):")
    print(f"  wall {res['median_wall_s']:.2f} s, filter metrics {res['median_metrics_s']:.3f} s "
          f"(language model load included): {100 * res['median_share']:.2f}% (target <= 5%)")
    print(f"  fingerprints {res['median_fingerprints_s']:.3f} s (the 32x32 resize {resize:.3f} s included): "
          f"{100 * res['median_fingerprint_share']:.2f}% (per run: "
          + ", ".join(f"{100 * r['fingerprint_share']:.2f}%" for r in runs) + ")")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


def fingerprint_resize_seconds(shards: str, clip_model: str) -> float:
    """Seconds the decode spends on the fingerprints' 32x32 input for every image of the shards,
    decoded at the size annotate's pass decodes them (the largest input of its image models)."""
    import numpy as np
    import torch

    from recaption.io.images import ImageError, decode
    from recaption.io.pixels import resize_crop
    from recaption.io.shards import iter_shard
    from recaption.io.sources import list_shards
    from recaption.scoring.clip import ClipConfig, ClipScorer
    from recaption.scoring.fingerprint import FINGERPRINT_SPEC

    draft = max(ClipScorer(ClipConfig(model=clip_model)).image_size, FINGERPRINT_SPEC.draft_size)  # tiny BLIP: 64 px
    decoded = []
    for url in list_shards(shards):
        for rec in iter_shard(url):
            if getattr(rec, "image_field", None):
                try:
                    px = np.array(decode(rec.image_bytes, draft_size=draft))
                    decoded.append(torch.from_numpy(px).permute(2, 0, 1))
                except ImageError:
                    continue
    torch.set_num_threads(1)  # a decode worker's share
    t0 = time.perf_counter()
    for x in decoded:
        resize_crop(x, FINGERPRINT_SPEC)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
