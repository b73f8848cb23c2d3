"""What the verbs return (`recaption.annotate`, `.mix`, `.run`, `.import_captions`, `.verify`,
`.report`): objects a notebook shows as tables and a script reads as before.

A summary result is the summary dict itself (a `dict` subclass: `res["counts"]["written"]`,
`json.dumps(res)` and the CLI's `--json` work as they did; `to_dict()` gives a plain copy), with
attributes over it: counts, paths, timings, the per-rule and per-strategy tables (`Table`), and
for a mix its drops as an Arrow table and its report. The tables are small (a row per rule,
strategy or reason); nothing here holds a row per sample except `drops()`, read columnar from
`_dropped.parquet`. Nothing heavy is imported until asked for (pyarrow for `to_arrow` and
`drops`, matplotlib for a report).
"""
from __future__ import annotations

import html
from pathlib import Path

from recaption.errors import RecaptionError


def _cell(v) -> str:
    """A value as a table cell: numbers with separators, mappings as `key: n` lines joined."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.4f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_cell(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return " / ".join(_cell(x) for x in v)
    return str(v)


def _text_table(headers: list[str], rows: list[list[str]], title: str = "") -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = "  ".join
    out = [title] if title else []
    if any(headers):
        out.append(line(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    out += [line(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(out)


def _html_table(headers: list[str], rows: list[list[str]], title: str = "") -> str:
    esc = html.escape
    cap = f"<caption style='text-align:left'><b>{esc(title)}</b></caption>" if title else ""
    head = "<tr>" + "".join(f"<th style='text-align:left'>{esc(h)}</th>" for h in headers) + "</tr>" \
        if any(headers) else ""
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{cap}{head}{body}</table>"


class Table:
    """A small table (a row per rule, strategy or reason) as a list of row dicts: indexable and
    iterable, shown as a table in a notebook, `to_arrow()` / `to_pandas()` for more."""

    def __init__(self, rows: list[dict], columns: list[str] | None = None, title: str = ""):
        self.rows = [dict(r) for r in rows]
        self.columns = columns or list(dict.fromkeys(k for r in self.rows for k in r))
        self.title = title

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def __eq__(self, other) -> bool:
        return self.rows == (other.rows if isinstance(other, Table) else other)

    def column(self, name: str) -> list:
        """One column's values, row by row (None where a row lacks it)."""
        if name not in self.columns:
            from recaption.errors import unknown

            raise unknown("column", name, self.columns)
        return [r.get(name) for r in self.rows]

    def to_list(self) -> list[dict]:
        """The rows as plain dicts."""
        return [dict(r) for r in self.rows]

    def to_arrow(self):
        """The table as a pyarrow Table."""
        import pyarrow as pa

        return pa.Table.from_pylist([{c: r.get(c) for c in self.columns} for r in self.rows])

    def to_pandas(self):
        """The table as a pandas DataFrame (needs pandas)."""
        return self.to_arrow().to_pandas()

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        shown = [c for c in self.columns if any(r.get(c) is not None for r in self.rows)]  # no empty column
        return shown, [[_cell(r.get(c)) for c in shown] for r in self.rows]

    def __repr__(self) -> str:
        if not self.rows:
            return f"{self.title or 'table'}: no rows"
        return _text_table(*self._cells(), title=self.title)

    def _repr_html_(self) -> str:
        if not self.rows:
            return f"<p>{html.escape(self.title or 'table')}: no rows</p>"
        return _html_table(*self._cells(), title=self.title)


def _plain(v):
    """A copy of a summary value made of plain dicts and lists (results nested in it included)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


class Summary(dict):
    """A verb's summary: the dict `_summary.json` holds (mapping access as before), with
    attributes over it and a readable repr (a table)."""

    title = "recaption"

    def to_dict(self) -> dict:
        """The summary as a plain dict (what the verb returned before results were objects)."""
        return _plain(self)

    @property
    def ok(self) -> bool:
        """True when nothing failed: the command line's exit status would be 0."""
        return not self.failed

    @property
    def failed(self) -> list[dict]:
        """The shards that failed or could not be read whole: {shard, error} each."""
        return list(self.get("failed_shards") or [])

    def lines(self) -> list[tuple[str, object]]:
        """(label, value) rows of the repr."""
        return []

    def _tables(self) -> list[Table]:
        return []

    def __repr__(self) -> str:
        head = _text_table(["", ""], [[k, _cell(v)] for k, v in self.lines()], title=self.title)
        return "\n\n".join([head] + [repr(t) for t in self._tables() if len(t)])

    def _repr_html_(self) -> str:
        head = _html_table(["", ""], [[k, _cell(v)] for k, v in self.lines()], title=self.title)
        return "".join([head] + [t._repr_html_() for t in self._tables() if len(t)])


class AnnotateResult(Summary):
    """What `annotate` (and caption, score) did: shards, samples, errors, timings."""

    def __init__(self, summary: dict, ann_dir: str | None = None):
        super().__init__(summary)
        self.ann_dir = ann_dir

    @property
    def title(self) -> str:
        """The repr's first line."""
        return f"recaption {self.get('verb', 'annotate')}: annotations in {self.ann_dir}"

    @property
    def ok(self) -> bool:
        """True when no shard failed and not every sample failed (exit status 0)."""
        return not self.failed and not self.get("all_failed")

    @property
    def counts(self) -> dict:
        """Shards done / skipped (already done) / failed, samples read, samples with errors."""
        return {**self.get("shards", {}), "samples": self.get("samples", 0), "errors": self.get("errors", 0)}

    @property
    def paths(self) -> dict:
        """Where the annotation files are."""
        return {"annotations": self.ann_dir}

    @property
    def timings(self) -> dict:
        """Seconds in all (`total`) and per stage, summed over workers; samples per second."""
        return {"total": self.get("seconds"), "samples_per_second": self.get("samples_per_second"),
                **(self.get("stage_seconds") or {})}

    @property
    def errors(self) -> Table:
        """The most frequent reasons samples failed, with their counts."""
        return Table([{"reason": k, "samples": n} for k, n in (self.get("error_reasons") or {}).items()],
                     ["reason", "samples"], "samples with errors, by reason")

    def lines(self) -> list[tuple[str, object]]:
        """(label, value) rows of the repr."""
        sh = self.get("shards", {})
        out = [("shards", f"{sh.get('done', 0):,} done, {sh.get('skipped', 0):,} already done, "
                          f"{sh.get('failed', 0):,} failed"), ("samples", self.get("samples")),
               ("samples with errors", self.get("errors"))]
        if "matched" in self:
            out.append(("captions matched", self["matched"]))
        out += [(f"  {f['shard']}", f["error"]) for f in self.failed]
        if self.get("samples_per_second"):
            out.append(("rate", f"{self['samples_per_second']:,.2f} samples/s over {self['seconds']:,.1f} s"))
        return out

    def _tables(self) -> list[Table]:
        stages = self.get("stage_seconds") or {}
        return [self.errors, Table([{"stage": k, "seconds": v} for k, v in sorted(stages.items(), key=lambda x: -x[1])],
                                   ["stage", "seconds"], "time by stage")]


class ImportResult(AnnotateResult):
    """What `import_captions` did: an annotate summary, and how many captions matched a sample."""

    @property
    def matched(self) -> int:
        """Captions that found their sample."""
        return self.get("matched", 0)


class MixResult(Summary):
    """What `mix` did (or, as a dry run, would do): counts, drops by reason, the filter and
    duplicate rules' tables, every strategy side by side (a dry run), its files, its report."""

    def __init__(self, summary: dict, out_dir: str | None = None, ann_dir: str | None = None, input_spec=None,
                 filters=None):
        super().__init__(summary)
        self.out_dir, self.ann_dir, self.input_spec, self.filters = out_dir, ann_dir, input_spec, filters

    @property
    def title(self) -> str:
        """The repr's first line."""
        where = ("dry run, nothing written" if self.get("dry_run") else
                 f"overlay in {self.out_dir} (decisions, no shards)" if self.get("overlay") else
                 f"mixed shards in {self.out_dir}")
        return f"recaption mix ({self.get('strategy')}): {where}"

    @property
    def failed(self) -> list[dict]:
        """Input shards not read whole and output shards that failed: {shard, error} each."""
        return [*(self.get("failed_shards") or []), *(self.get("shard_errors") or []),
                *(self.get("failed_output_shards") or [])]

    @property
    def written(self) -> bool:
        """Whether this mix wrote a folder (a dry run writes nothing)."""
        return not self.get("dry_run") and self.out_dir is not None

    @property
    def counts(self) -> dict:
        """Samples read, written (kept), with the raw and the synthetic caption, dropped, errors;
        output shards."""
        return {k: v for k, v in self.get("counts", {}).items() if k != "dropped_by_reason"}

    @property
    def threshold(self) -> float | None:
        """The threshold in force (from --threshold, or the one --fraction found)."""
        return self.get("threshold")

    @property
    def timings(self) -> dict:
        """Seconds per part (pool pass and plan, write); a run's annotate part under `annotate`."""
        out = dict(self.get("seconds") or {}) if isinstance(self.get("seconds"), dict) else {}
        ann = self.get("annotate") or {}
        return out | ({"annotate": ann.get("seconds")} if ann else {})

    @property
    def paths(self) -> dict:
        """The folder and the files a written mix has: summary, drops, decisions; the annotations."""
        out = {"annotations": self.ann_dir}
        if self.written:
            from recaption.io.atomic import join

            out |= {"out": self.out_dir, "summary": join(self.out_dir, "_summary.json"),
                    "drops": join(self.out_dir, "_dropped.parquet"), "decisions": join(self.out_dir, "_decisions")}
        return out

    @property
    def drop_reasons(self) -> Table:
        """Why samples were dropped, most frequent first."""
        by = (self.get("counts") or {}).get("dropped_by_reason") or {}
        return Table([{"reason": k, "samples": n} for k, n in sorted(by.items(), key=lambda x: -x[1])],
                     ["reason", "samples"], "dropped, by reason")

    @property
    def rules(self) -> Table:
        """The filter rules in order: what each dropped, how many of those lacked its input, and
        what it would drop alone."""
        return Table(self.get("filters") or [], ["rule", "dropped", "lacking", "alone"], "filter rules, in order")

    @property
    def duplicates(self) -> Table:
        """The duplicate rules in order: what each dropped, of how many compared."""
        return Table(self.get("dedup") or [], title="duplicate rules, in order")

    @property
    def overlap(self) -> Table:
        """The evaluation-overlap rules: what each dropped."""
        return Table((self.get("decontaminate") or {}).get("rules") or [], title="evaluation overlap, by rule")

    @property
    def strategies(self) -> Table:
        """A dry run's every strategy at the same threshold or fraction (empty otherwise): what
        each would write and drop, and what its cut drops by reason."""
        columns = ["strategy", "threshold", "threshold_column", "kept", "raw", "synthetic", "dropped", "cut", "note"]
        return Table(self.get("strategies") or [], columns, "every strategy side by side (same pool, same filters)")

    def shards(self) -> list[str]:
        """The output shards written (none for a dry run or an overlay)."""
        if not self.written or self.get("overlay"):
            return []
        from recaption.io.atomic import join, listdir

        return [join(self.out_dir, n) for n in sorted(listdir(self.out_dir)) if n.endswith(".tar")]

    def drops(self):
        """Every sample not written, as a pyarrow Table (key, shard, reason), in input order."""
        if not self.written:
            raise RecaptionError("a dry run writes nothing, so it has no drops to read: run the mix with an out "
                                 "folder (or overlay=True)")
        import pyarrow.parquet as pq

        from recaption.io.fs import open_url

        with open_url(self.paths["drops"]) as f:
            return pq.read_table(f)

    def open_report(self, out: str | None = None, *, show: bool = True, fraction: float | None = None):
        """Build the HTML report of this mix (a dry run: of its annotations, its filter rules
        previewed) into `out` (default: a new temporary folder) and open it in a browser where
        one is available (`show=False`: only build it). Returns the page (`Page`)."""
        import tempfile

        from recaption.errors import require

        require("matplotlib", "report")
        from recaption.report.data import load
        from recaption.report.html import render

        out = out or tempfile.mkdtemp(prefix="recaption-report-")
        if self.written:
            data = load(self.out_dir, None, fraction, annotations=self.ann_dir)
        else:
            shards = self.input_spec if isinstance(self.input_spec, str) else None  # images beside the numbers
            data = load(self.ann_dir, shards, fraction if fraction is not None else self.get("fraction"),
                        alpha=self.get("alpha"), filters=self.filters or None)
        page = Page(render(data, out))
        if show:
            page.open()
        return page

    def lines(self) -> list[tuple[str, object]]:
        """(label, value) rows of the repr."""
        c = self.get("counts", {})
        kept = "would write" if self.get("dry_run") else "kept" if self.get("overlay") else "written"
        out = [("samples read", c.get("read")),
               (kept, f"{c.get('written', 0):,} (raw {c.get('raw', 0):,}, synthetic {c.get('synthetic', 0):,})"),
               ("dropped", c.get("dropped")), ("samples with errors", c.get("errors"))]
        thr = self.get("threshold")
        out.append(("threshold", "none" if thr is None else f"{_cell(thr)} on {self.get('threshold_column')}"))
        if c.get("output_shards") is not None:
            out.append(("output shards", c["output_shards"]))
        out += [(f"  {f.get('shard')}", f.get("error")) for f in self.failed]
        return out

    def _tables(self) -> list[Table]:
        return [self.drop_reasons, self.rules, self.duplicates, self.overlap, self.strategies]


class RunResult(MixResult):
    """What `run` did: the mix's result, with its annotate part as `annotate`."""

    @property
    def annotate(self) -> AnnotateResult:
        """The annotate part's result (empty where the recipe computed nothing new)."""
        return AnnotateResult(self.get("annotate") or {}, self.ann_dir)


class Verification(list):
    """What `verify` found: a list of problems, one line each (empty: the folder holds)."""

    def __init__(self, problems, folder: str | None = None):
        super().__init__(problems)
        self.folder = folder

    @property
    def ok(self) -> bool:
        """True when the folder agrees with its record and its inputs."""
        return not self

    def __repr__(self) -> str:
        if self.ok:
            return f"verify: {self.folder} holds"
        return "\n".join(f"verify: {p}" for p in self)

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(repr(self)) + "</pre>"


class Page:
    """A report page that was written: its path (`str()` and `os.fspath` give it), `open()`."""

    def __init__(self, path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __eq__(self, other) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def open(self) -> bool:
        """Open the page in a web browser; False where none is available."""
        import webbrowser

        return webbrowser.open(self.path.resolve().as_uri())

    def __repr__(self) -> str:
        return f"report: {self.path}"

    def _repr_html_(self) -> str:
        uri = html.escape(self.path.resolve().as_uri())
        return f"<p>report: <a href='{uri}' target='_blank'>{html.escape(str(self.path))}</a></p>"
