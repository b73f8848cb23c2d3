"""Fill the `captions` column from captions made elsewhere (a CSV or parquet keyed by sample key
or DataComp `uid`), so they can be scored and mixed like recaption's own."""
from __future__ import annotations

from dataclasses import dataclass, field

from recaption import annotators as registry
from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io import tarindex
from recaption.io.atomic import open_url
from recaption.io.shards import DEFAULT_IMAGE_KEYS, ReadFailure, ReadLimits, ReadOptions, iter_shard
from recaption.io.sources import shard_name
from recaption.stages.commit import commit, plan_shard
from recaption.stages.reports import ShardReport, error_reasons


def load_caption_table(path: str, key_column: str, caption_column: str) -> dict[str, list[str]]:
    """key -> candidates; a list column gives several, repeated keys add candidates in file order."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    with open_url(path, "rb") as f:
        if path.endswith(".parquet"):
            t = pq.read_table(f)
        else:  # keys stay strings: '000000123' must not become 123
            t = pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(
                column_types={key_column: pa.string(), caption_column: pa.string()}))
    for c in (key_column, caption_column):
        if c not in t.column_names:
            raise RecaptionError(f"{path} has no column {c!r} (columns: {', '.join(t.column_names)})")
    out: dict[str, list[str]] = {}
    for k, cap in zip(t.column(key_column).to_pylist(), t.column(caption_column).to_pylist()):
        if k is None or cap is None:
            continue
        out.setdefault(str(k), []).extend(cap if isinstance(cap, list) else [cap])
    return out


def sample_key(rec, key_column: str) -> str | None:
    """What a sample is matched by: its key, or a field of its json (None where the json lacks it)."""
    if key_column == "key":
        return rec.key
    v = (rec.meta or {}).get(key_column)
    return None if v is None else str(v)


def check_some_match(shards: list[str], table: dict, key_column: str, captions: str,
                     image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS) -> None:
    """Refuse, before anything is written, a caption file that matches no sample: the samples are
    read (without decoding) until the first one that matches, usually the first sample; when none
    does, the error names the key column and an example key from each side."""
    first = None
    for url in shards:
        for rec in iter_shard(url, ReadOptions(image_keys=image_keys)):
            if isinstance(rec, ReadFailure):
                continue
            k = sample_key(rec, key_column)
            if k is not None and k in table:
                return
            first = first or (shard_name(url), rec, k)
    if first is None:
        return  # no readable sample: each shard's failure is reported as usual
    shard, rec, k = first
    theirs = (f"the first sample's key is {rec.key!r} ({shard})" if key_column == "key" else
              f"the first sample's json has no {key_column!r} (its key is {rec.key!r}, {shard})" if k is None else
              f"the first sample's {key_column} is {k!r} ({shard})")
    example = next(iter(table), None)
    ours = f"the file's first key is {example!r}" if example is not None else "the file has no keyed caption"
    raise RecaptionError(f"no caption in {captions} matches a sample by --key-column {key_column}: {theirs}, "
                         f"{ours}; keys are compared as text, by --key-column (key, or a json field such as uid)")


@dataclass
class ImportSpec:
    """Where imported captions come from and how they match samples (picklable)."""
    ann_dir: str
    captions: str
    key_column: str = "key"  # `key`, or `uid` to match the sample json's uid (DataComp)
    caption_column: str = "caption"
    captioner: str = "imported"
    overwrite: bool = False
    image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS
    groups: dict = field(default_factory=dict)  # {"captions": settings}, recorded in each file
    limits: ReadLimits = field(default_factory=ReadLimits)  # what one sample may cost to read


class ImportStage:
    """Callable on one shard URL: its annotation file with the imported captions."""

    def __init__(self, spec: ImportSpec):
        self.spec = spec
        self.table = None

    def __getstate__(self):  # a worker loads the table itself: a pickled one would cross with every item
        return {"spec": self.spec, "table": None}

    def __call__(self, url: str, progress=None) -> ShardReport:
        s = self.spec
        name = shard_name(url)
        out = ann.path_for(s.ann_dir, name)
        work = plan_shard(out, s.groups, s.overwrite)
        if not work.todo:
            if progress:
                progress(work.existing_rows)
            return ShardReport(name, "skipped", work.existing_rows)
        if self.table is None:
            self.table = load_caption_table(s.captions, s.key_column, s.caption_column)
        rows, matched = [], 0
        for rec in iter_shard(url, ReadOptions(image_keys=s.image_keys, limits=s.limits)):
            if isinstance(rec, ReadFailure):
                rows.append(registry.error_row(rec.key, name, rec.reason))
                continue
            caps = self.table.get(sample_key(rec, s.key_column), [])
            matched += bool(caps)
            rows.append(registry.empty_row(rec.key, name, rec.raw_caption)
                        | {"captions": caps, "captioner": s.captioner}
                        | rec.index_fields() | rec.digest_fields())
            if progress:
                progress(1)
        work.keep[tarindex.GROUP] = tarindex.identity(url)  # the shard its member index describes
        commit(out, rows, work, s.groups)
        keyed = [r for r in rows if r["key"] is not None]
        return ShardReport(name, "done", len(keyed), sum(r["status"] != "ok" for r in keyed),
                           read_error=next((r["error"] for r in rows if r["key"] is None), None),
                           reasons=error_reasons(rows), info={"matched": matched})
