"""`recaption verify FOLDER`: does a mix (or overlay) folder still agree with its record and its
inputs? Every check reads what the folder recorded, never re-decides a row:

* the run finished (`_summary.json`, valid JSON) and recaption wrote the folder (`_recaption.json`);
* every decisions file is the one the mix wrote (its sha256 against the summary's `decisions`),
  was made with the settings the summary records (strategy, threshold, ...), and its input shard
  and the columns the mix read from its annotation file are as they were (`annotation_digest`);
* every count of the summary is what the decisions (and, for `errors`, the annotation files) hold;
* `_dropped.parquet` holds, shard by shard, the (key, reason) rows the decisions drop;
* each output shard has its tar, parquet and stats; the stats name decisions files as they are now
  (`built_from`); the tar reads to its end-of-archive blocks and holds its parts' kept samples in
  order, each with the members the decisions give it (`txt` their caption, `json` ending with their
  caption keys, tags and `recaption` object, `syn.txt` where the strategy writes one), and the parquet the same samples
  and captions; every kept sample is in exactly one output shard.

Memory stays within one shard's worth: decisions files are read one at a time, output shards one
at a time (with the few decisions files their parts name), and the drops file as a stream.

An annotation folder is checked file by file: readable, one row a key, and with `shards` given,
each file's recorded shard identity against the shard now, and every shard given has its file.
"""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io import tarindex
from recaption.io.atomic import exists, join, listdir, read_text
from recaption.io.fs import open_url
from recaption.io.shards import EndNotingInfo, end_problem, split_member
from recaption.io.sources import shard_name
from recaption.mixing import provenance
from recaption.mixing.columns import CHOSEN as SYNTHETIC_GROUP  # decisions and parquet column, several groups
from recaption.mixing.plan import FOLDER, META_KEY, listed_decisions, repeated_kept_key
from recaption.mixing.verify_counts import SUMMARY, Tally

MIX_KINDS = ("mix", "run", "overlay")
DROPPED = "_dropped.parquet"
# the settings a decisions file records that the summary records too (absent in both: the default)
SETTINGS = {"strategy": None, "threshold": None, "threshold_column": None, "alpha": None,
            "filter_synthetic": None, "caption_keys": "none", "synthetic_group": None, "min_max": None,
            "json_tags": None}
DECIDED = ["key", "kept", "reason", "caption_source"]
EXPECT = ["key", "caption", "caption_source", "raw_caption", "synthetic_caption", "clip_raw", "clip_synthetic",
          "sieve", "blend", "captioner"]
KEYS = ["captions", "caption_groups", "json_tags"]  # the decisions columns the json's keys are written from
NEW = ("txt", "json")  # members every written sample has (`output.members.members`)


def verify(folder: str, shards: list[str] | None = None) -> list[str]:
    """What disagrees in `folder`, one line each (empty: it holds)."""
    from recaption.io.folders import read_record

    if not exists(folder):
        raise RecaptionError(f"{folder}: no such folder")
    rec = read_record(folder)
    if rec is None:
        raise RecaptionError(f"{folder}: no _recaption.json: not a folder recaption wrote")
    if rec.get("kind") in MIX_KINDS:
        if shards is not None:
            raise RecaptionError(f"{folder} is a {rec.get('kind')} folder: its decisions name the input shards it "
                                 "read, so --input is only for annotation folders")
        return _mix(folder, rec)
    return _annotations(folder, shards)


@dataclass
class _File:
    """What one decisions file holds, as the output check needs it (no rows)."""

    path: str
    kept: int
    digest: str
    repeated: str | None
    level: str = "none"  # the --caption-keys it was made with
    strategy: str | None = None  # and the strategy
    placed: list = field(default_factory=list)  # (start, end) of the output shards' parts


def _mix(folder: str, rec: dict) -> list[str]:
    path = join(folder, SUMMARY)
    if not exists(path):
        return [f"{folder}: no {SUMMARY}: the run did not finish (re-run the same command)"]
    try:
        summary = json.loads(read_text(path))
    except ValueError as e:
        return [f"{path} is not valid JSON ({e})"]
    if not isinstance(summary, dict):
        return [f"{path} holds a {type(summary).__name__}, not a summary object"]
    out: list[str] = []
    dec_dir = join(folder, FOLDER)
    present = sorted(n[: -len(".parquet")] for n in (listdir(dec_dir) if exists(dec_dir) else [])
                     if n.endswith(".parquet") and not n.startswith("."))
    listed = listed_decisions(rec)  # a file the record does not list is not the mix's (a user's own): left alone
    present = [n for n in present if listed is None or n in listed]
    recorded = summary.get("decisions")
    if not isinstance(recorded, dict):
        out.append(f"{SUMMARY} records no digests of the decisions files (written by an older recaption): "
                   "re-run the mix")
        recorded, order = None, present
    else:
        order = [n for n in recorded if n in present]
        out += [f"{FOLDER}/{n}.parquet is missing ({SUMMARY} records it)" for n in recorded if n not in present]
        out += [f"{FOLDER}/{n}.parquet is not one the mix wrote ({SUMMARY} does not record it)"
                for n in present if n not in recorded]
    drops = _Drops(join(folder, DROPPED), order)
    out += drops.problems
    tally, files = Tally((summary.get("counts") or {}).get("dropped_by_reason")), {}
    identity = (rec.get("identity") or {}).get("mix")
    for name in order:
        p = join(dec_dir, f"{name}.parquet")
        with open_url(p, "rb") as f:
            data = f.read()
        digest = provenance.decisions_digest(data)
        if recorded is not None and recorded[name] != digest:
            out.append(f"{p} is not the decisions file the mix wrote (its sha256 differs from {SUMMARY}'s record)")
        try:
            t, meta = _decisions(data)
        except Exception as e:  # a file that does not parse is one line, the others go on
            out.append(f"{p} cannot be read as a decisions file ({type(e).__name__}: {e})")
            continue
        out += _settings(meta, summary, identity, p)
        out += _inputs(meta, p)
        out += tally.add(t, meta, p)
        dropped = t.filter(_not(t["kept"])).select(["key", "reason"])
        out += drops.check(name, dropped)
        files[name] = _File(p, tally.last_kept, digest, repeated_kept_key(t), meta.get("caption_keys") or "none",
                            meta.get("strategy"))
    out += drops.rest()
    overlay = rec.get("kind") == "overlay" or bool(summary.get("overlay"))
    out += tally.check(summary, overlay)
    if overlay:
        out += [f"{FOLDER}/{n}.parquet: {f.repeated}: a reader of the overlay refuses this shard"
                for n, f in files.items() if f.repeated]
        readable = sum(f.kept for f in files.values() if not f.repeated)
        if summary.get("written") != readable:
            out.append(f"{SUMMARY} says {summary.get('written')} written, readers of the overlay get {readable}")
    else:
        out += _outputs(folder, files, summary, rec)
    return out


def _not(mask):
    import pyarrow.compute as pc

    return pc.invert(pc.fill_null(mask, False))


def _decisions(data: bytes):
    """A decisions file's DECIDED columns and its metadata, from its bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(pa.BufferReader(data))
    chosen = [SYNTHETIC_GROUP] if SYNTHETIC_GROUP in pf.schema_arrow.names else []  # several synthetic groups
    t = pf.read(columns=DECIDED + chosen)
    return t, json.loads(t.schema.metadata[META_KEY])


def _settings(meta: dict, summary: dict, identity: dict | None, path: str) -> list[str]:
    """The settings a decisions file was made with against the summary's (and the folder record's)."""
    out = []
    for k, default in SETTINGS.items():
        mine, theirs = meta.get(k, default), summary.get(k, default)
        if mine != theirs:
            out.append(f"{path} was made with {k} {mine!r}, {SUMMARY} records {theirs!r}")
    if identity is not None:
        for k, default in (("filters", []), ("dedup", {}), ("decontaminate", None)):
            mine, theirs = meta.get(k) or default, identity.get(k) or default
            if mine != theirs:
                out.append(f"{path} was made with {k} {mine!r}, _recaption.json records {theirs!r}")
    return out


def _inputs(meta: dict, path: str) -> list[str]:
    """The input shard and annotation file a decisions file was made from, as they are now."""
    out = []
    url = meta.get("input")
    try:
        change = tarindex.change(tarindex.identity(url), meta)
    except (FileNotFoundError, OSError):
        return [f"{url}: the input shard is gone ({path})"]
    if change is not None and change != tarindex.NO_STAMP:
        out.append(f"{url} changed since the mix ({change}): re-run the mix")
    a, cols = meta.get("annotations"), meta.get("annotation_columns")
    if a and cols and meta.get("annotation_digest"):
        if not exists(a):
            out.append(f"{a}: the annotation file is gone")
        elif provenance.annotation_digest(a, cols) != meta["annotation_digest"]:
            out.append(f"{a} changed since the mix (the columns it read): re-run the mix")
    return out


class _Drops:
    """`_dropped.parquet` read as a stream of runs of one shard's rows, in the order of the
    decisions files (the order it is written in): one shard's rows in memory at a time."""

    def __init__(self, path: str, order: list[str]):
        self.path, self.left, self.problems = path, set(order), []
        self.buf, self.batches = None, iter(())
        if not exists(path):
            self.problems.append(f"{DROPPED} is missing")
            self.left = None
            return
        try:
            self._pf = ann.open_parquet(path)
            pf = self._pf.__enter__()
            self.batches = pf.iter_batches(batch_size=65536, columns=["key", "shard", "reason"])
        except Exception as e:
            self.problems.append(f"{path} cannot be read ({type(e).__name__}: {e})")
            self.left = None

    def _fill(self) -> bool:
        import pyarrow as pa

        while self.buf is None or not self.buf.num_rows:
            b = next(self.batches, None)
            if b is None:
                return False
            self.buf = pa.Table.from_batches([b])
        return True

    def _head(self):
        return self.buf["shard"][0].as_py() if self._fill() else None

    def _run(self):
        """The rows of the shard at the head, up to the first row of another shard."""
        import pyarrow as pa
        import pyarrow.compute as pc

        shard, parts = self._head(), []
        while self._fill():
            col = self.buf["shard"]
            other = pc.is_valid(col) if shard is None else pc.fill_null(pc.not_equal(col, shard), True)
            i = pc.index(other, True).as_py()
            if i == -1:
                parts.append(self.buf)
                self.buf = None
                continue
            parts.append(self.buf.slice(0, i))
            self.buf = self.buf.slice(i)
            break
        return shard, pa.concat_tables(parts).select(["key", "reason"])

    def check(self, name: str, want) -> list[str]:
        """The rows for shard `name` against `want` (its decisions' dropped key and reason)."""
        if self.left is None:
            return []
        out = self._strays()
        self.left.discard(name)
        got = self._run()[1] if self._head() == name else want.slice(0, 0)
        if got.num_rows == want.num_rows and _sorted(got).equals(_sorted(want)):
            return out
        have = Counter(zip(got["key"].to_pylist(), got["reason"].to_pylist()))  # only where they differ
        need = Counter(zip(want["key"].to_pylist(), want["reason"].to_pylist()))
        extra, lack = list((have - need).elements()), list((need - have).elements())
        what = []
        if lack:
            what.append(f"lacks {len(lack)} its decisions drop (first: key {lack[0][0]!r}, {lack[0][1]!r})")
        if extra:
            what.append(f"holds {len(extra)} they do not (first: key {extra[0][0]!r}, {extra[0][1]!r})")
        return out + [f"{DROPPED}, shard {name}: " + "; ".join(what)]

    def _strays(self) -> list[str]:
        """Runs of shards no decisions file still to come names (out of place, or unknown)."""
        out = []
        while self._fill() and self._head() not in self.left:
            shard, run = self._run()
            out.append(f"{DROPPED} holds {run.num_rows} rows of shard {shard!r} that no decisions file "
                       "drops there (out of place, or not a shard of the mix)")
        return out

    def rest(self) -> list[str]:
        """Whatever follows the last shard's rows."""
        if self.left is None:
            return []
        self.left = set()
        out = self._strays()
        self._pf.__exit__(None, None, None)
        return out


def _sorted(t):
    return t.sort_by([("key", "ascending"), ("reason", "ascending")])


def _outputs(folder: str, files: dict[str, _File], summary: dict, rec: dict) -> list[str]:
    """Each output shard against its stats and the decisions it names; every kept sample once."""
    out = []
    names = set()
    ours = set(rec.get("written") or [])
    for n in listdir(folder):
        if n.startswith(("_", ".")) or n not in ours:  # a file recaption did not write is not its to judge
            continue
        for suffix in ("_stats.json", ".tar", ".parquet"):
            if n.endswith(suffix):
                names.add(n[: -len(suffix)])
    failed = {f.get("shard"): f.get("error") for f in summary.get("failed_output_shards") or []
              if isinstance(f, dict)}
    written, unread = 0, []
    for name in sorted(names):
        w, problems = _output(folder, name, files)
        if w is None:  # its samples and where they came from are unknown: the totals would mislead
            unread.append(name)
        else:
            written += w
        out += problems
    for name, error in sorted(failed.items()):
        out.append(f"output shard {name} failed ({error})" if name not in names else
                   f"output shard {name} is listed as failed in {SUMMARY}, yet its files are there")
    n_out = (summary.get("counts") or {}).get("output_shards")
    if n_out is not None and n_out != len(names | set(failed)):
        out.append(f"{SUMMARY} counts {n_out} output shards, the folder holds {len(names | set(failed))}")
    if unread:
        return out + [f"where the kept samples went and how many were written is not checked: output shard(s) "
                      f"{', '.join(unread)} cannot be read"]
    for d, f in files.items():
        twice, none = _coverage(f.placed, f.kept)
        if twice:
            out.append(f"{twice} kept samples of {shard_name(d)} are in more than one output shard")
        if none:
            out.append(f"{none} kept samples of {shard_name(d)} are in no output shard")
    if summary.get("written") != written:
        out.append(f"{SUMMARY} says {summary.get('written')} written, the tars hold {written}")
    return out


def _coverage(placed: list, n: int) -> tuple[int, int]:
    """Of `n` kept samples, how many the (start, end) parts place twice or more, and how many none."""
    edges = Counter()
    for a, b in placed:
        a, b = max(0, min(a, n)), max(0, min(b, n))
        if b > a:
            edges[a] += 1
            edges[b] -= 1
    twice = covered = depth = 0
    last = 0
    for x in sorted(edges):
        if depth >= 1:
            covered += x - last
        if depth >= 2:
            twice += x - last
        depth += edges[x]
        last = x
    return twice, n - covered


def _output(folder: str, name: str, files: dict[str, _File]) -> tuple[int | None, list[str]]:
    """One output shard: (samples its tar holds, what disagrees); None where its stats or its tar
    cannot be read, so what it holds and places is unknown."""
    paths = {s: join(folder, f"{name}{s}") for s in ("_stats.json", ".tar", ".parquet")}
    missing = [p.rsplit("/", 1)[-1] for p in paths.values() if not exists(p)]
    if missing:
        return 0, [f"output shard {name}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"]
    try:
        stats = json.loads(read_text(paths["_stats.json"]))
    except ValueError as e:
        return None, [f"{paths['_stats.json']} is not valid JSON ({e})"]
    if not isinstance(stats, dict):
        return None, [f"{paths['_stats.json']} holds a {type(stats).__name__}, not a stats object"]
    samples, cut = _tar_samples(paths[".tar"])
    if samples is None:
        return None, [f"{name}.tar is missing or unreadable ({cut})"]
    out = [f"{name}.tar is not whole ({cut})"] if cut else []
    keys = [s[0] for s in samples]
    try:
        pq_t = ann.read_table(paths[".parquet"], columns=["key", "caption", "caption_source", SYNTHETIC_GROUP])
    except Exception as e:
        return len(samples), out + [f"{paths['.parquet']} cannot be read ({type(e).__name__}: {e})"]
    if pq_t["key"].to_pylist() != keys:
        out.append(f"{name}.tar and {name}.parquet hold different samples")
    if stats.get("count") != len(samples):
        out.append(f"{name}_stats.json counts {stats.get('count')}, {name}.tar holds {len(samples)}")
    parts = stats.get("parts")
    if not parts:
        return None, out + [f"{name}_stats.json records no parts (written before provenance): re-run the mix"]
    want = _wanted(name, parts, files, out)
    if want is None:
        return len(samples), out
    if want["key"].to_pylist() != keys:
        return len(samples), out + [f"{name}.tar does not hold its parts' kept samples in order"]
    made = files[parts[0]["decisions"]]  # as its decisions were written (the summary's settings are checked apart)
    out += _members(name, samples, want, made.strategy, made.level)
    for col in ("caption", "caption_source", SYNTHETIC_GROUP):
        if col not in want.column_names and col not in pq_t.column_names:
            continue  # a mix of one synthetic group has no synthetic_group column
        if col not in pq_t.column_names or col not in want.column_names:
            out.append(f"{name}.parquet {'lacks' if col in want.column_names else 'has'} the {col} column "
                       f"{'its decisions have' if col in want.column_names else 'its decisions lack'}")
        elif pq_t[col].cast("string").to_pylist() != want[col].to_pylist():
            out.append(f"{name}.parquet's {col} column is not its decisions'")
    return len(samples), out


def _wanted(name: str, parts: list, files: dict[str, _File], out: list[str]):
    """The kept decisions rows an output shard's parts name, in order (None: they cannot be had)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows, ok = [], True
    for p in parts:
        d = p.get("decisions")
        f = files.get(d)
        if f is None:
            out.append(f"output shard {name} names {FOLDER}/{d}.parquet, which is missing")
            ok = False
            continue
        f.placed.append((p["start"], p["end"]))
        if f.digest != p.get("digest"):
            out.append(f"output shard {name} was built from other decisions than {FOLDER}/{d}.parquet holds now: "
                       "re-run the mix")
            ok = False
            continue
        if ok:
            t = ann.read_table(f.path, columns=["kept"] + EXPECT + KEYS + [SYNTHETIC_GROUP])  # those written
            t = t.filter(pc.fill_null(t["kept"], False)).slice(p["start"], p["end"] - p["start"])
            rows.append(t.drop_columns(["kept"]))
    return pa.concat_tables(rows) if ok and rows else None


def _members(name: str, samples: list, want, strategy, level: str = "none") -> list[str]:
    """Each sample's members against its decisions row: txt its caption, json ending with its
    caption keys and `recaption` object, the strategy's extra members where it has a synthetic
    caption."""
    from recaption.mixing.strategies.base import named
    from recaption.output import caption_keys, recaption_field

    extra = tuple(named(strategy).extra_members) if strategy else ()
    added = recaption_field.encode(want, strategy) if strategy else [None] * want.num_rows
    keys = caption_keys.encode(want, level)
    caps, syns = want["caption"].to_pylist(), want["synthetic_caption"].to_pylist()
    out = []
    for i, ((key, fields, twice, data), cap, syn, rc, kt) in enumerate(zip(samples, caps, syns, added, keys)):
        if twice:
            out.append(f"{name}.tar: sample {key!r} has member .{twice} twice")
        lacks = [m for m in NEW if m not in fields]
        expect = set(extra) if syn is not None else set()
        have = {m for m in fields if m in set(extra)}
        problem = None
        if lacks:
            problem = f"lacks its {', '.join('.' + m for m in lacks)}"
        elif data["txt"] != (cap or "").encode("utf-8"):
            problem = "has a txt that is not its decisions' caption"
        elif rc is not None and not _json_holds(data["json"], kt, rc, lambda i=i: want.slice(i, 1).to_pylist()[0],
                                                    level):
            problem = "has a json whose caption keys or recaption object are not its decisions'"
        elif have != expect:
            problem = f"has members {sorted(have)} where its decisions give {sorted(expect)}"
        elif any(data[m] != syn.encode("utf-8") for m in expect):
            problem = "has a synthetic caption member that is not its decisions'"
        if problem:
            out.append(f"{name}.tar: sample {key!r} {problem}")
            break  # the first sample says the shard is wrong; the rest would say it again
    return out


def _json_holds(text: bytes, keys_text: bytes, rc: bytes, row, level: str) -> bool:
    """Whether a written json ends with the caption keys and recaption object its decisions row
    gives (as spliced into the sample's own text); where the object was written anew (the input's
    json held NaN, or already a key written), it is parsed and its fields compared (`row()`)."""
    from recaption.output import caption_keys

    if text.rstrip().endswith(keys_text + b'"recaption": ' + rc + b"}"):
        return True
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    want = caption_keys.as_dict(row(), level)
    return (isinstance(obj, dict) and obj.get("recaption") == json.loads(rc)
            and all(obj.get(k) == v for k, v in want.items()))


def _tar_samples(path: str) -> tuple[list | None, str | None]:
    """An output tar's samples in order, as (key, fields, a field seen twice, {txt, json, syn.txt
    bytes}), and why it is not whole (None: it ends with its end-of-archive blocks)."""
    samples: list = []
    try:
        with open_url(path, "rb") as f, tarfile.open(fileobj=f, mode="r|", tarinfo=EndNotingInfo) as tf:
            for m in tf:
                if not m.isfile():
                    continue
                split = split_member(m.name)
                key, fld = (m.name, "") if split is None else split
                if not samples or samples[-1][0] != key:
                    samples.append((key, [], None, {}))
                k, fields, twice, data = samples[-1]
                if fld in fields and twice is None:
                    samples[-1] = (k, fields, fld, data)
                fields.append(fld)
                if fld in ("txt", "json", "syn.txt"):
                    data[fld] = tf.extractfile(m).read()
            cut = end_problem(tf)
    except (tarfile.TarError, OSError, EOFError) as e:
        return None, f"{type(e).__name__}: {e}"
    return samples, cut


def _annotations(folder: str, shards: list[str] | None) -> list[str]:
    out = []
    by_name = {shard_name(u): u for u in shards or []}
    files = sorted(n for n in listdir(folder) if n.endswith(".parquet") and not n.startswith("."))
    if not files:
        return [f"{folder}: no annotation files"]
    for n in files:
        path = join(folder, n)
        try:
            keys = ann.read_table(path, columns=["key"])["key"].drop_null().to_pylist()
        except Exception as e:
            out.append(f"{path}: cannot be read ({type(e).__name__}: {e})")
            continue
        twice = [k for k, c in Counter(keys).items() if c > 1]
        if twice:
            out.append(f"{path}: key {twice[0]!r} has more than one row")
        url = by_name.get(n[: -len(".parquet")])
        recorded = provenance.recorded_identity(path)
        if url and recorded:
            change = tarindex.change(tarindex.identity(url), recorded)
            if change is not None and change != tarindex.NO_STAMP:
                out.append(f"{url} changed since it was annotated ({change})")
    held = {n[: -len(".parquet")] for n in files}
    out += [f"{u}: no annotation file in {folder} (annotating it resumes the folder)" for n, u in by_name.items()
            if n not in held]
    return out
