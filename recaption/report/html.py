"""Render a ReportData as PNG plots (matplotlib, headless) and one static HTML page. A plot is
drawn only where it has data, and a sample grid only where it has cards.

The report folder is one recaption owns, as a mix's is (`recaption.io.folders.claim_report`):
recorded in `_recaption.json`, locked while written, every file written whole (a temporary name,
then a rename) and recorded before it is written, `index.html` last; files of an earlier report
that this one does not write again are removed, and nothing else is."""
from __future__ import annotations

import html
import io
import itertools
import zlib
from pathlib import Path

import numpy as np

from recaption.report.data import ReportData

COLORS = ("#4c72b0", "#55a868", "#dd8452", "#8172b3")
TITLES = {
    "clip": "CLIP score: raw vs synthetic captions", "sieve": "SIEVE score", "blend": "blended score",
    "words": "caption length (words)", "chars": "alt-text length (characters)",
    "side": "shorter image side (px; original size where recorded)", "aspect": "aspect ratio (longer / shorter side)",
    "kb": "image file size (KB)", "tokens": "caption length (CLIP tokens, untruncated)",
}
# the filter rule whose limit each metric plot marks
LIMITS = {"words": ("min-words", "raw"), "side": ("min-side", None), "aspect": ("max-aspect", None)}
BLUR = 12  # pixels across a blurred thumbnail is shrunk to before it is blurred and scaled back
ORDER = ("clip", "sieve", "blend", "words", "chars", "side", "aspect", "kb")  # then the annotators' other histograms
THRESHOLD_OF = {"clip": "clip_raw", "blend": "blend"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _crop(edges: np.ndarray, series: dict[str, np.ndarray], max_bars: int = 60):
    """The bins between the first and last with data (and one empty bin either side, where there
    is one), merged so at most `max_bars` remain."""
    total = sum(series.values())
    nz = np.flatnonzero(total)
    lo, hi = max(nz[0] - 1, 0), min(nz[-1] + 2, len(total))
    step = max(1, -(-(hi - lo) // max_bars))
    hi = lo + step * -(-(hi - lo) // step)
    pad = hi - len(total)
    out = {}
    for k, v in series.items():
        v = np.concatenate([v, np.zeros(max(pad, 0), v.dtype)])[lo:hi]
        out[k] = v.reshape(-1, step).sum(axis=1)
    e = np.concatenate([edges, edges[-1] + (edges[1] - edges[0]) * np.arange(1, max(pad, 0) + 1)])
    return e[lo:hi + 1:step], out


def _png(fig) -> bytes:
    """A figure as PNG bytes (closed after), so it is written whole like every other file."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _counts_axis(ax) -> None:
    """Counts are whole numbers: no tick at 0.5 samples."""
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _hist(files: dict, name: str, edges: np.ndarray, series: dict[str, np.ndarray], lines: dict[str, float]):
    plt = _plt()
    e, series = _crop(edges, series)
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    for (label, counts), color in zip(series.items(), itertools.cycle(COLORS)):  # more series than colours: all drawn
        ax.bar(e[:-1], counts, width=np.diff(e), align="edge", alpha=0.6, color=color,
               label=f"{label} (n={int(counts.sum()):,})")
    for label, t in lines.items():
        if t is not None:
            ax.axvline(t, color="k", linestyle="--", linewidth=1)
            ax.text(t, ax.get_ylim()[1] * 0.92, f" {label} {t:.4g}", fontsize=8)
    ax.set_title(TITLES.get(name) or name.replace("_", " "))  # an annotator's own: its name
    ax.legend(fontsize=8)
    _counts_axis(ax)
    fig.tight_layout()
    files[f"{name}.png"] = _png(fig)
    return f"{name}.png"


def _langs(files: dict, langs, top: int = 12):
    plt = _plt()
    common = langs.most_common(top)
    rest = sum(langs.values()) - sum(n for _, n in common)
    names = [k for k, _ in common] + (["other"] if rest else [])
    vals = [n for _, n in common] + ([rest] if rest else [])
    total = sum(vals)
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    ax.bar(names, vals, color=[COLORS[1] if n == "en" else COLORS[0] for n in names])
    for i, v in enumerate(vals):
        ax.text(i, v, f"{100 * v / total:.0f}%", ha="center", va="bottom", fontsize=7)
    ax.set_title("alt-text language (fastText lid.176, top-1)")
    _counts_axis(ax)
    fig.tight_layout()
    files["lang.png"] = _png(fig)
    return "lang.png"


def _bars(files: dict, per: list[dict], own: str | None):
    plt = _plt()
    rows = [r for r in per if "kept" in r]
    names = [("▶ " if r["strategy"] == own else "")
             + r["strategy"].replace(" --filter-synthetic", "\n+filter-synthetic") for r in rows]
    parts = {"raw": [r["raw"] for r in rows], "synthetic": [r["synthetic"] for r in rows],
             "cut by the strategy": [sum(r["cut"].values()) for r in rows],
             "dropped before (filters, errors)": [r["dropped"] - sum(r["cut"].values()) for r in rows]}
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
    bottom = np.zeros(len(rows))
    for (part, vals), color in zip(parts.items(), ("#4c72b0", "#55a868", "#c44e52", "#999999")):
        ax.bar(names, vals, bottom=bottom, label=part, color=color)
        bottom += np.asarray(vals, dtype=float)
    ax.set_title("what each strategy would write")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, frameon=False)
    _counts_axis(ax)
    fig.tight_layout()
    files["strategies.png"] = _png(fig)
    return "strategies.png"


def _thumb(data: bytes | None, files: dict, name: str, blur: bool = False) -> bool:
    """A JPEG thumbnail of an image into `files` under `name`; False where it does not decode.
    `blur`: shrunk to BLUR pixels and blurred before it is written, so the page never holds the
    sharp image (a CSS blur would ship it)."""
    from PIL import Image, ImageFilter

    from recaption.io.images import ImageError, decode

    if data is None:
        return False
    try:
        im = decode(data, draft_size=256)
    except ImageError:
        return False
    im.thumbnail((192, 192))
    if blur:
        size = im.size
        im = im.convert("RGB").resize((BLUR, max(1, BLUR * size[1] // max(1, size[0]))), Image.BILINEAR)
        im = im.resize(size, Image.BILINEAR).filter(ImageFilter.GaussianBlur(6))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=85)
    files[name] = buf.getvalue()
    return True


def thumb_name(shard: str | None, key: str) -> str:
    """`img/SHARD/KEY.jpg`: two shards may hold the same key, so the shard names the folder; a
    name changed to be file-safe carries a hash of the original, so two keys never share one."""
    return f"img/{_safe(shard or '_')}/{_safe(key)}.jpg"


def _table(rows: list[tuple[str, str]], head: tuple[str, ...] | None = None) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head) if head else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{'<tr>' + h + '</tr>' if h else ''}{body}</table>"


def _n(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.4g}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _summary(d: ReportData) -> str:
    rows = [("folder", f"{d.source} ({d.kind})"), ("samples", _n(d.rows)), ("annotated without error", _n(d.valid))]
    s = d.summary or {}
    c = s.get("counts") or {}
    if c:
        rows += [("strategy", f"{s.get('strategy')}" + (" --filter-synthetic" if s.get("filter_synthetic") else "")),
                 ("threshold", f"{_n(s.get('threshold'))} on {s.get('threshold_column')}" +
                  (f" (fraction {s['fraction']})" if s.get("fraction") is not None else "")),
                 ("written", f"{_n(c.get('written'))} (raw {_n(c.get('raw'))}, synthetic {_n(c.get('synthetic'))})"),
                 ("dropped", _n(c.get("dropped")))]
        rows += [(f"  {k}", _n(v)) for k, v in (c.get("dropped_by_reason") or {}).items()]
    if d.filters:
        rows.append(("passed the filters", _n(d.pooled)))
    return _table(rows)


def _filters(d: ReportData) -> str:
    if not d.filters:
        return ""
    rows = [(f["rule"], _n(f["dropped"]), _n(f["lacking"]), _n(f["alone"])) for f in d.filters]
    return ("<h2>filters, applied before the strategy</h2>" +
            _table(rows, ("rule", "dropped (first rule failed)", "of which lacking its input", "would drop alone")))


def _removal(d: ReportData) -> str:
    """The folder's duplicate and overlap rules, as its summary counted them."""
    s = d.summary or {}
    out = ""
    ev = s.get("decontaminate")
    if ev:
        rows = [(r["rule"], _n(r["dropped"])) for r in ev.get("rules", [])]
        out += (f"<h2>evaluation overlap: {html.escape(str(ev.get('eval')))} ({_n(ev.get('images'))} images"
                f"{', ' + _n(ev.get('unreadable')) + ' unreadable' if ev.get('unreadable') else ''})</h2>"
                + _table(rows, ("rule", "pool samples dropped")))
    if s.get("dedup"):
        rows = [(r["rule"], _n(r["dropped"]), _n(r.get("compared"))) for r in s["dedup"]]
        out += "<h2>duplicates, after the filters</h2>" + _table(rows, ("rule", "dropped", "compared"))
    return out


def blurred(d: ReportData) -> set:
    """The (shard, key) of every sample a blurred grid holds, and of every other one shown scoring
    BLUR_AT or more: blurred wherever the page shows it."""
    return set() if d.unblur else {(r.get("shard"), r["key"]) for t in d.blurred for r in d.grids[t]} | d.unsafe


def _overlap_pairs(d: ReportData, files: dict) -> str:
    """Each overlap as two thumbnails side by side: the pool sample, then the EVAL image it copies."""
    if not d.overlaps:
        return ""
    cells = []
    hidden = blurred(d)
    # the evaluation image is a copy of its pool sample: blurred with it, in every pair that shows it
    evals = {o["eval"] for o in d.overlaps if (o["shard"], o["key"]) in hidden}
    for i, o in enumerate(d.overlaps):
        imgs = ""
        blur = (o["shard"], o["key"]) in hidden or o["eval"] in evals
        for side, data in (("pool", d.images.get((o["shard"], o["key"]))), ("eval", d.eval_images.get(o["eval"]))):
            name = f"img/overlap-{i}-{side}.jpg"
            if _thumb(data, files, name, blur):
                imgs += f'<img src="{name}" alt="{side}: {html.escape(o["key"] if side == "pool" else o["eval"])}">'
        cells.append(f'<div class="pair"><div class="imgs">{imgs}</div>'
                     f'<div class="k">{html.escape(o["shard"])}/{html.escape(o["key"])}</div>'
                     f'<div class="r">{html.escape(o["reason"])}</div></div>')
    more = (f"<p class='note'>the first {len(d.overlaps):,} of {d.overlaps_total:,}; every one is in "
            "_dropped.parquet</p>" if d.overlaps_total > len(d.overlaps) else "")
    return (f"<h2>evaluation overlaps: pool sample, then the evaluation image ({d.overlaps_total:,})</h2>"
            f"{more}<div class='pairs'>{''.join(cells)}</div>")


def _groups(d: ReportData) -> str:
    """The caption groups side by side: who wrote them, and the best candidate's length and scores."""
    if not d.groups or list(d.groups) == [""]:
        return ""

    def mean(s, k):
        return _n(s[k] / s[f"{k}_n"]) if s[f"{k}_n"] else "-"

    rows = [(g or "(unnamed)", ", ".join(sorted(s["captioners"])) or "-", _n(int(s["samples"])),
             mean(s, "words"), mean(s, "clip"), mean(s, "sieve")) for g, s in sorted(d.groups.items())]
    fused = [(g, why, _n(n)) for g, s in sorted(d.groups.items()) for why, n in sorted(s.get("fusion", {}).items())]
    sent = ("<h3>chained groups: rows sent to the text model, by clause, and why the others were not</h3>"
            + _table(fused, ("group", "clause or reason", "rows"))) if fused else ""
    return ("<h2>caption groups</h2>" + _table(rows, ("group", "captioner", "samples with captions",
                                                       "words (best caption)", "CLIP (best caption)", "SIEVE")) + sent)


def _lengths(d: ReportData) -> str:
    """Caption lengths under the CLIP tokenizer: per source, how many and the share the CLIP score
    saw only a prefix of (the `length` group)."""
    from recaption.report.data import length_label

    if not d.lengths:
        return ""
    rows = [(length_label(g), _n(s["n"]), _n(s["tokens"] / s["n"]) if s["n"] else "-", _n(s["context"]),
             f"{100 * s['truncated'] / s['n']:.1f}% ({_n(s['truncated'])})" if s["n"] else "-")
            for g, s in sorted(d.lengths.items(), key=lambda kv: (kv[0] != "alt-text", kv[0]))]
    return ("<h2>caption lengths (CLIP tokens)</h2>" + _table(rows, (
        "captions", "counted", "mean tokens", "CLIP context", "truncated (longer than the context)")))


def _strategies(d: ReportData) -> str:
    rows = []
    for r in d.per_strategy:
        name = ("▶ " if r["strategy"] == d.own else "") + r["strategy"]
        thr = f"{_n(r.get('threshold'))} on {r['threshold_column']}"
        if "kept" not in r:
            rows.append((name, thr, r.get("note", ""), "", "", ""))
            continue
        cut = "; ".join(f"{k}: {v:,}" for k, v in r["cut"].items()) or "none"
        rows.append((name, thr, _n(r["kept"]), _n(r["raw"]), _n(r["synthetic"]), cut))
    cfg = d.cfg
    at = f"fraction {cfg.fraction}" if cfg.fraction is not None else f"threshold {cfg.threshold}"
    return (f"<h2>every strategy at {html.escape(at)}</h2>" +
            _table(rows, ("strategy", "threshold", "would write", "raw", "synthetic", "cut by the strategy")))


def _card(r: dict, d: ReportData, files: dict, blur: set) -> str:
    img = ""
    name = thumb_name(r.get("shard"), r["key"])
    if _thumb(d.images.get((r.get("shard"), r["key"])), files, name, (r.get("shard"), r["key"]) in blur):
        img = f'<img src="{html.escape(name)}" alt="{html.escape(r["key"])}">'
    lines = [f'<div class="k">{html.escape(r["key"])} · {html.escape(r.get("shard") or "")}</div>',
             f'<div><b>raw</b> {html.escape(r["raw"] or "—")} <span>{_f(r["clip_raw"])}</span></div>',
             f'<div><b>synthetic</b> {html.escape(r["synthetic"] or "—")} <span>{_f(r["clip_syn"])}</span></div>',
             f'<div class="s">sieve {_f(r["sieve"])} · blend {_f(r["blend"])}</div>']
    if r.get("tag"):
        lines.append(f'<div class="s">{html.escape(r["tag"])} {_f(r["tag_value"])}</div>')
    if r.get("reason"):
        lines.append(f'<div class="r">{html.escape(r["reason"])}</div>')
    return f'<div class="card">{img}{"".join(lines)}</div>'


def render(data: ReportData, out_dir: str | Path) -> Path:
    """Write the report's plots, thumbnails and index.html into out_dir (a folder recaption owns:
    `recaption.io.folders.claim_report`); returns the page's path."""
    from recaption.io import folders

    out = str(out_dir)
    _refuse_overlaps(data, out)
    files = pages(data)
    with folders.locked(out):
        rec = folders.claim_report(out, {"report_of": data.source})
        folders.publish(out, rec, files, last="index.html")
    return Path(out) / "index.html"


def _refuse_overlaps(d: ReportData, out: str) -> None:
    """The report goes in a folder of its own: never the folder reported on, its annotation
    folder, or the input shard folders."""
    from recaption.errors import RecaptionError
    from recaption.io import folders

    for what, path in (("the folder reported on", d.source), ("its annotation folder", d.ann_dir)):
        rel = folders.related(out, path) if path else None
        if rel in ("is", "lies inside"):
            raise RecaptionError(f"report folder {out} {rel} {what} {path}; choose an --out of its own")
    if d.input:
        from recaption.io.sources import list_shards

        try:
            shards = list_shards(d.input)
        except Exception:  # unreadable input: the report shows no images, and writes nowhere near it
            shards = []
        folders.refuse_overlap(out, shards, "report folder")


def pages(data: ReportData) -> dict[str, bytes]:
    """Every file of the report by its name in the report folder (`index.html`, `NAME.png`,
    `img/SHARD/KEY.jpg`), as bytes: nothing is written here."""
    files: dict[str, bytes] = {}
    d = data
    rules = {r["rule"].split("=", 1)[0]: r["rule"].split("=", 1)[1] for r in d.filters if "=" in r["rule"]}
    plots = []
    for name in [*ORDER, *(n for n in d.hists if n not in ORDER)]:
        series = d.hists.get(name)
        if not series:
            continue
        lines = {}
        if name in THRESHOLD_OF and d.thresholds.get(THRESHOLD_OF[name]) is not None:
            lines[THRESHOLD_OF[name]] = d.thresholds[THRESHOLD_OF[name]]
        if name in LIMITS and LIMITS[name][0] in rules:
            lines[LIMITS[name][0]] = float(rules[LIMITS[name][0]])
        lines.update(_rule_lines(name, rules))
        if name == "tokens" and d.lengths:  # where CLIP stops reading
            lines["CLIP context"] = float(max(s["context"] for s in d.lengths.values()))
        plots.append(_hist(files, name, d.edges(name), series, lines))
    if d.langs:
        plots.append(_langs(files, d.langs))
    if any("kept" in r for r in d.per_strategy):
        plots.append(_bars(files, d.per_strategy, d.own))
    sections = []
    blur = blurred(d)
    for title, cards in d.grids.items():
        total = max(d.shown_of.get(title, len(cards)), len(cards))
        note = ""
        if title in d.blurred and not d.unblur:
            note = "<p class='note'>blurred: these may be explicit; recaption report --unblur shows them</p>"
        sections.append(f"<h2>{html.escape(title)} ({len(cards):,} of {total:,} shown)</h2>{note}<div class='grid'>"
                        f"{''.join(_card(r, d, files, blur) for r in cards)}</div>")
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in d.notes)
    overlaps = _overlap_pairs(d, files)
    groups = _groups(d) + _lengths(d)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>recaption report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}img{{max-width:100%}}
table{{border-collapse:collapse;margin:.5em 0 1em}}
td,th{{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:left}}
.plots img{{width:48%;margin:.5%}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:12px}}
.card{{border:1px solid #ddd;padding:8px;font-size:12px}}.card span{{color:#666}}.k{{color:#999}}.s{{color:#555}}
.r{{color:#a33}}.note{{color:#777}}.pairs{{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}}
.pair{{border:1px solid #ddd;padding:8px;font-size:12px}}
.pair .imgs{{display:flex;gap:6px}}.pair img{{width:48%}}</style>
</head><body><h1>recaption report</h1>{_summary(d)}{notes}{_filters(d)}{_removal(d)}{groups}{_strategies(d)}
<div class="plots">{''.join(f'<img src="{p}" alt="{p}">' for p in plots)}</div>
{overlaps}{''.join(sections)}</body></html>"""
    files["index.html"] = page.encode("utf-8")
    return files


def _rule_lines(name: str, rules: dict) -> dict:
    """Limits of the filter rules on a declared histogram's column, in its units."""
    from recaption import annotators

    hist = next((h for a in annotators.classes() for h in a.hists if h.name == name), None)
    if hist is None:
        return {}
    kinds = annotators.rule_kinds()
    return {r: float(v) / hist.scale for r, v in rules.items()
            if r in kinds and kinds[r].column == hist.column and kinds[r].op in ("min", "max")}


def _f(x):
    return "—" if x is None else f"{x:.3f}"


def _safe(key: str) -> str:
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in key)[:100]
    return safe if safe == key else f"{safe}-{zlib.crc32(key.encode('utf-8')):08x}"
