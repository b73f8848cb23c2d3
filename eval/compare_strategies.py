#!/usr/bin/env python
"""Compare mixing strategies on one annotation set: kept, replaced, dropped, score distributions.

    python eval/compare_strategies.py ann/ --fraction 0.3
    python eval/compare_strategies.py mixed/          # an output folder with _annotations/

Nothing is written; the numbers come from the annotation files alone (like `recaption mix --dry-run`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def compare(path: str, fraction: float = 0.3, alpha: float = 0.5) -> list[dict]:
    from recaption.mixing.compare import strategy_table
    from recaption.mixing.pool import PoolSource

    p = Path(path)
    ann_dir = p / "_annotations" if (p / "_annotations").is_dir() else p
    names = sorted(f.stem for f in ann_dir.glob("*.parquet") if not f.name.startswith("_"))
    return strategy_table(PoolSource.of_folder(str(ann_dir), names), fraction, alpha)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    t = compare(a.path, a.fraction, a.alpha)
    cols = ["strategy", "threshold", "kept", "raw", "replaced", "dropped", "mean_clip_written", "median_clip_written"]
    print("  ".join(f"{c:>18}" for c in cols))
    for r in t:
        print("  ".join(f"{r[c]:>18.4f}" if isinstance(r[c], float) else f"{str(r[c]):>18}" for c in cols))
    if a.json:
        Path(a.json).write_text(json.dumps(t, indent=2))
    return t


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
