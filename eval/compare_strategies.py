#!/usr/bin/env python
"""Compare mixing strategies on one annotation set: kept, replaced, dropped, score distributions.

    python eval/compare_strategies.py ann/ --fraction 0.3
    python eval/compare_strategies.py mixed/          # a run's or a mix's output folder: its annotations, its filters

Nothing is written; the numbers come from the annotation files alone (like `recaption mix --dry-run`).
Every strategy keeps the given fraction of its own score, as `recaption mix --fraction` would.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def compare(path: str, fraction: float = 0.3, alpha: float = 0.5, annotations: str | None = None) -> list[dict]:
    from recaption.mixing.compare import strategy_table
    from recaption.mixing.pool import PoolSource
    from recaption.report.folder import resolve

    f = resolve(path, annotations)  # an annotation folder, or an output folder (its annotations and filters)
    filters = f.cfg.filter_set if f.cfg else None
    rows = strategy_table(PoolSource.of_folder(str(f.ann_dir), f.names, filters=filters), fraction, alpha)
    for r in rows:
        r["replaced"] = r.get("synthetic")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--annotations", help="an output folder's annotation folder, when it moved")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    t = compare(a.path, a.fraction, a.alpha, a.annotations)
    cols = ["strategy", "threshold", "kept", "raw", "replaced", "dropped", "mean_clip_written", "median_clip_written"]
    print("  ".join(f"{c:>18}" for c in cols))
    for r in t:
        print("  ".join(f"{r.get(c):>18.4f}" if isinstance(r.get(c), float) else f"{str(r.get(c, '')):>18}"
                        for c in cols))
    if a.json:
        Path(a.json).write_text(json.dumps(t, indent=2))
    return t


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
