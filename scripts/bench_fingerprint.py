#!/usr/bin/env python
"""What the image fingerprints (sha256 + pHash, recaption.scoring.fingerprint) cost per image.

Real-size JPEGs (512x384 and 1024x768, made from the bundled photographs as `bench.py --mode
input` makes them) go through the fast decode path on one core, as an annotate worker decodes
them: once for CLIP's input alone (open_clip ViT-B/32: 224 shortest side, centre crop), once for
CLIP's input plus the fingerprint's 32x32 (FINGERPRINT_SPEC) from the same decode. The
fingerprint's cost per image is the extra resize, the pHash of the batch (a DCT as two small
matrix products, median, bits) and the sha256 of the bytes; the resize is timed on its own, on the
images as the shared decode leaves them. Its share is given against that CLIP
decode alone, the cheapest pixel work an annotate pass does (`score` with CLIP and no captioner):
with any model running, annotate costs more per image and the share is smaller.

    python scripts/bench_fingerprint.py [--images 200] [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def per_image(fn, n: int, repeats: int) -> float:
    """Median seconds per image of fn() over repeats (fn handles n images)."""
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) / n)
    return statistics.median(runs)


def main(argv=None) -> dict:
    """Measure, print the table, write the JSON when asked."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "scripts" / "bench-fingerprint-results.json"))
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    from bench_input import SIZES, make_jpegs
    from recaption.io.decode import decode_pixels
    from recaption.io.images import decode
    from recaption.io.pixels import PixelSpec, resize_crop
    from recaption.scoring import fingerprint as fp

    torch.set_num_threads(1)
    clip = PixelSpec("shortest", (224,), crop=(224, 224), interpolation="bicubic",
                     mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    both = {"clip": clip, "fingerprint": fp.FINGERPRINT_SPEC}
    draft = max(s.draft_size for s in both.values())
    load = os.getloadavg()
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "load_before": [round(x, 2) for x in load], "sizes": []}
    for label, size in SIZES.items():
        datas = make_jpegs(a.images, size)
        n = len(datas)
        decode_clip = per_image(lambda: [decode_pixels(d, {"clip": clip}, draft_size=draft) for d in datas], n,
                                a.repeats)
        decoded = [torch.from_numpy(np.array(decode(d, draft_size=draft))).permute(2, 0, 1) for d in datas]
        resize = per_image(lambda: [resize_crop(x, fp.FINGERPRINT_SPEC) for x in decoded], n, a.repeats)
        decode_alone = per_image(lambda: [decode_pixels(d, {"f": fp.FINGERPRINT_SPEC},
                                                        draft_size=fp.FINGERPRINT_SPEC.draft_size) for d in datas],
                                 n, a.repeats)
        px = np.stack([decode_pixels(d, both, draft_size=draft)[0]["fingerprint"].numpy() for d in datas])
        phash = per_image(lambda: fp.phash_pixels(px), n, a.repeats)
        sha = per_image(lambda: fp.sha256s(datas), n, a.repeats)
        total = resize + phash + sha
        row = {"size": label, "images": n, "kb_per_image": round(sum(map(len, datas)) / n / 1024, 1),
               "decode_clip_ms": round(decode_clip * 1e3, 3), "extra_resize_ms": round(resize * 1e3, 3),
               "phash_ms": round(phash * 1e3, 4), "sha256_ms": round(sha * 1e3, 4),
               "fingerprint_ms": round(total * 1e3, 3), "share_of_clip_decode": round(total / decode_clip, 4),
               "fingerprint_alone_decode_ms": round((decode_alone + phash + sha) * 1e3, 3)}
        res["sizes"].append(row)
        print(json.dumps(row), flush=True)
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    lines = ["| JPEG | CLIP decode + preprocess | + fingerprint resize | pHash | sha256 | fingerprint | share | "
             "fingerprint with no model (own decode) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["sizes"]:
        lines.append(f"| {r['size']} ({r['kb_per_image']} KB) | {r['decode_clip_ms']} ms | {r['extra_resize_ms']} ms | "
                     f"{r['phash_ms']} ms | {r['sha256_ms']} ms | {r['fingerprint_ms']} ms | "
                     f"{100 * r['share_of_clip_decode']:.1f}% | {r['fingerprint_alone_decode_ms']} ms |")
    print(f"\nper image, one core (load before {res['load_before']}, after {res['load_after']}):\n" + "\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
