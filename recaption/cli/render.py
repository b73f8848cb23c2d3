"""Summaries as people read them: tables of rounded numbers, one reason a line, text never read
as markup. `--json` prints the summary itself instead."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text


def _num(x, digits: int = 4) -> str:
    if x is None:
        return "none"
    if isinstance(x, float):
        return f"{x:,.{digits}f}".rstrip("0").rstrip(".") if abs(x) < 1e6 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _cell_width(cell: str) -> int:
    return max((len(line) for line in cell.split("\n")), default=0)


def show(title: str, headers: list[str] | None, rows: list[list[str]], right: tuple[int, ...] = ()) -> None:
    """A table where it fits the width whole (no cell cut or folded: a number is never `-0.0…`),
    else a list, a block a row; table art (box lines) only on a terminal, so logs and pipes read
    plain. `right`: the columns of numbers, right-aligned."""
    from rich import box

    console = Console()
    n = len(headers) if headers else max((len(r) for r in rows), default=0)
    widths = [max([_cell_width(headers[i]) if headers else 0] + [_cell_width(r[i]) for r in rows]) for i in range(n)]
    framed = console.is_terminal
    need = sum(widths) + (3 * n + 1 if framed else 2 * (n - 1))
    if need <= console.width:
        t = Table(title=Text(title), title_justify="left", show_header=bool(headers), pad_edge=framed,
                  box=box.SQUARE if framed else None, padding=(0, 1) if framed else (0, 2, 0, 0))
        for i in range(n):
            t.add_column(Text(headers[i]) if headers else None, no_wrap=True, justify="right" if i in right else "left")
        for r in rows:
            t.add_row(*[Text(c) for c in r])
        console.print(t)
        return
    print(title)
    for r in rows:
        if headers:  # a block a row: its first cell, then each other cell under its header
            print(r[0])
            for h, c in zip(headers[1:], r[1:]):
                if c:
                    print(f"    {h}: {'; '.join(c.splitlines())}")
        else:
            print(f"{r[0]}: {'; '.join(r[1].splitlines())}" if r[1] else r[0])


class Rows:
    """A two-column table built row by row; cells are plain text."""

    def __init__(self, title: str):
        self.title = title
        self.rows: list[list[str]] = []

    def add(self, label: str, value) -> "Rows":
        """Add a row (numbers formatted with separators); returns self to chain."""
        self.rows.append([label, value if isinstance(value, str) else _num(value)])
        return self

    def print(self) -> None:
        """Print the table (a list where it does not fit the width)."""
        show(self.title, None, self.rows)


def _timings(rows: Rows, stage_seconds: dict) -> None:
    total = sum(stage_seconds.values())
    for k, v in sorted(stage_seconds.items(), key=lambda kv: -kv[1]):
        share = f" ({100 * v / total:.0f}%)" if total > 0 else ""
        rows.add(f"  {k}", f"{v:,.1f} s{share}")


def _failures(rows: Rows, failed: list[dict]) -> None:
    for f in failed:
        rows.add(f"  {f.get('shard')}", str(f.get("error")))


def annotate(summary: dict, where: str) -> None:
    """caption, score, annotate, import-captions."""
    sh = summary["shards"]
    r = Rows(f"recaption {summary.get('verb', 'annotate')}: annotations in {where}")
    r.add("shards", f"{sh.get('done', 0):,} done, {sh.get('skipped', 0):,} already done, {sh.get('failed', 0):,} failed")
    r.add("samples", f"{summary['samples']:,}")
    if "matched" in summary:
        r.add("captions matched", summary["matched"])
    r.add("samples with errors", summary["errors"])
    for reason, n in (summary.get("error_reasons") or {}).items():
        r.add(f"  {reason}", n)
    if summary.get("failed_shards"):
        r.add("shards not read whole", len(summary["failed_shards"]))
        _failures(r, summary["failed_shards"])
    for group, f in (summary.get("fusion") or {}).items():  # chained groups: rows sent, by clause or reason
        r.add(f"group {group}: sent to its model", f"{f['sent']:,}")
        for why, n in f["by"].items():
            r.add(f"  {why}", f"{n:,}")
    if summary.get("samples_per_second"):
        r.add("rate", f"{summary['samples_per_second']:,.2f} samples/s over {summary['seconds']:,.1f} s")
    if summary.get("stage_seconds"):
        r.add("time by stage", "")
        _timings(r, summary["stage_seconds"])
    r.print()


def mix(summary: dict, out: str | None) -> None:
    """mix, run, demo."""
    c = summary["counts"]
    title = ("dry run, nothing written" if summary.get("dry_run") else
             f"overlay in {out} (decisions, no shards)" if summary.get("overlay") else f"mixed shards in {out}")
    r = Rows(f"recaption mix ({summary['strategy']}): {title}")
    r.add("samples read", c["read"])
    r.add("would write" if summary.get("dry_run") else "kept" if summary.get("overlay") else "written",
          f"{c['written']:,} (raw {c['raw']:,}, synthetic {c['synthetic']:,})")
    if c.get("synthetic_groups"):  # several synthetic groups: the rows whose synthetic caption each gave
        r.add("synthetic caption from", "")
        for g, n in c["synthetic_groups"].items():
            r.add(f"  {g}", f"{n['read']:,} rows; {n['written']:,} kept, {n['synthetic']:,} with it as txt")
    r.add("dropped", c["dropped"])
    for reason, n in sorted(c["dropped_by_reason"].items(), key=lambda x: -x[1]):
        r.add(f"  {reason}", n)
    r.add("samples with errors", c["errors"])
    if summary.get("filters"):
        r.add("filter rules, in order", "")
        for f in summary["filters"]:
            lack = f", {f['lacking']:,} of them lacking its input" if f["lacking"] else ""
            r.add(f"  {f['rule']}", f"drops {f['dropped']:,}{lack}; alone it would drop {f['alone']:,}")
    ev = summary.get("decontaminate")
    if ev:
        bad = f", {ev['unreadable']:,} unreadable" if ev.get("unreadable") else ""
        r.add("evaluation overlap", f"{ev['eval']}: {ev['images']:,} images{bad}")
        for f in ev["rules"]:
            r.add(f"  {f['rule']}", f"drops {f['dropped']:,}" + (f" ({f['mirrored']:,} mirrored)" if f.get("mirrored") else ""))
    if summary.get("dedup"):
        r.add("duplicate rules, in order", "")
        for f in summary["dedup"]:
            mirrored = f" ({f['mirrored']:,} mirrored)" if f.get("mirrored") else ""
            r.add(f"  {f['rule']}", f"drops {f['dropped']:,}{mirrored} of {f['compared']:,} compared")
    thr = summary.get("threshold")
    r.add("threshold", "none" if thr is None else f"{_num(thr)} on {summary['threshold_column']}")
    for k, (lo, hi) in (summary.get("min_max") or {}).items():
        if lo is not None:
            r.add(f"{k} min / max", f"{_num(lo)} / {_num(hi)}")
    if c.get("output_shards") is not None:
        r.add("output shards", c["output_shards"])
    for group in ("shard_errors", "failed_output_shards"):
        if summary.get(group):
            r.add("shards not read whole" if group == "shard_errors" else "output shards failed", len(summary[group]))
            _failures(r, summary[group])
    ann = summary.get("annotate") or {}
    if ann.get("samples_per_second"):
        r.add("annotate", f"{ann['samples']:,} samples, {ann['samples_per_second']:,.2f} samples/s")
    if ann.get("failed_shards"):
        _failures(r, ann["failed_shards"])
    r.print()
    if summary.get("strategies"):
        strategies(summary)
    if out and not summary.get("dry_run"):
        print(f"output: {out}")


def strategies(summary: dict) -> None:
    """The dry run's side-by-side view: every strategy at the same threshold or fraction."""
    from recaption.mixing.compare import variant_name

    chosen = variant_name(summary["strategy"], summary.get("filter_synthetic", False))
    at = (f"fraction {_num(summary['fraction'])}" if summary.get("fraction") is not None
          else f"threshold {_num(summary['threshold'])}" if summary.get("threshold") is not None else "no threshold")
    headers = ["strategy", "threshold", "would write", "raw", "synthetic", "dropped", "cut by the strategy"]
    rows = []
    for row in summary["strategies"]:
        name = ("> " if row["strategy"] == chosen else "  ") + row["strategy"]
        thr = "none" if row.get("threshold") is None else f"{_num(row['threshold'])} on {row['threshold_column']}"
        if "note" in row:
            rows.append([name, row["note"], *[""] * 5])
            continue
        cut = "\n".join(f"{k}: {v:,}" for k, v in sorted(row["cut"].items(), key=lambda kv: -kv[1])) or "none"
        rows.append([name, thr, _num(row["kept"]), _num(row["raw"]), _num(row["synthetic"]), _num(row["dropped"]), cut])
    show(f"every strategy at {at} (same pool, same filters); > marks the chosen one", headers, rows,
         right=(2, 3, 4, 5))
