"""Render a ReportData as PNG plots (matplotlib, headless) and one static HTML page."""
from __future__ import annotations

import html
import json
from pathlib import Path

from recaption.report.data import ReportData, picks


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _hist(out: Path, name: str, series: dict[str, list], thresholds: dict[str, float | None], title: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    for label, vals in series.items():
        vals = [v for v in vals if v is not None]
        if vals:
            ax.hist(vals, bins=30, alpha=0.55, label=f"{label} (n={len(vals)})")
    for label, t in thresholds.items():
        if t is not None:
            ax.axvline(t, color="k", linestyle="--", linewidth=1)
            ax.text(t, ax.get_ylim()[1] * 0.92, f" {label} {t:.3f}", fontsize=8)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _bars(out: Path, name: str, per: dict[str, dict]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    names = list(per)
    bottom = [0] * len(names)
    for part, color in (("raw", "#4c72b0"), ("synthetic", "#55a868"), ("dropped", "#c44e52")):
        vals = [per[n][part] for n in names]
        ax.bar(names, vals, bottom=bottom, label=part, color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title("caption source per strategy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _thumb(data: bytes, path: Path) -> bool:
    from recaption.io.images import ImageError, decode

    try:
        im = decode(data, draft_size=256)
    except ImageError:
        return False
    im.thumbnail((192, 192))
    im.save(path, format="JPEG", quality=85)
    return True


def render(data: ReportData, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    rows, th = data.rows, data.thresholds
    plots = [
        _hist(out, "clip.png", {"raw": [r["clip_raw"] for r in rows], "synthetic": [r["clip_syn"] for r in rows]},
              {"clip_raw": th.get("clip_raw")}, "CLIP score: raw vs synthetic captions"),
        _hist(out, "sieve.png", {"sieve": [r["sieve"] for r in rows]}, {}, "SIEVE score"),
        _hist(out, "blend.png", {"blend": [r["blend"] for r in rows]}, {"blend": th.get("blend")}, "blended score"),
        _hist(out, "length.png", {"raw": [len(r["raw"].split()) if r["raw"] else None for r in rows],
                                  "synthetic": [len(r["synthetic"].split()) if r["synthetic"] else None for r in rows]},
              {}, "caption length (words)"),
    ]
    if data.per_strategy:
        plots.append(_bars(out, "strategies.png", data.per_strategy))
    sections = []
    for title, group in picks(rows).items():
        cards = []
        for r in group:
            img = ""
            if r["key"] in data.images and _thumb(data.images[r["key"]], out / "img" / f"{_safe(r['key'])}.jpg"):
                img = f'<img src="img/{_safe(r["key"])}.jpg" alt="{html.escape(r["key"])}">'
            cards.append(
                f'<div class="card">{img}<div class="k">{html.escape(r["key"])}</div>'
                f'<div><b>raw</b> {html.escape(r["raw"] or "—")} <span>{_f(r["clip_raw"])}</span></div>'
                f'<div><b>synthetic</b> {html.escape(r["synthetic"] or "—")} <span>{_f(r["clip_syn"])}</span></div>'
                f'<div class="s">sieve {_f(r["sieve"])} · blend {_f(r["blend"])}</div></div>')
        sections.append(f"<h2>{html.escape(title)}</h2><div class='grid'>{''.join(cards)}</div>")
    summary = ""
    if data.summary:
        c = data.summary.get("counts", {})
        summary = "<pre>" + html.escape(json.dumps({k: c[k] for k in c}, indent=1)) + "</pre>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>recaption report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}img{{max-width:100%}}
.plots img{{width:48%;margin:.5%}}.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:12px}}
.card{{border:1px solid #ddd;padding:8px;font-size:12px}}.card span{{color:#666}}.k{{color:#999}}.s{{color:#555}}</style>
</head><body><h1>recaption report</h1><p>{html.escape(data.source)} · {len(rows)} scored samples</p>{summary}
<div class="plots">{''.join(f'<img src="{p}" alt="{p}">' for p in plots)}</div>{''.join(sections)}</body></html>"""
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def _f(x):
    return "—" if x is None else f"{x:.3f}"


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
