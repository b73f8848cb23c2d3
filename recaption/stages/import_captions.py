"""Fill the `captions` column from captions made elsewhere (a CSV or parquet keyed by sample key
or DataComp `uid`), so they can be scored and mixed like recaption's own."""
from __future__ import annotations

from dataclasses import dataclass

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io.atomic import exists
from recaption.io.shards import DEFAULT_IMAGE_KEYS, ReadFailure, ReadOptions, iter_shard
from recaption.io.sources import shard_name
from recaption.stages.annotate import ShardReport


def load_caption_table(path: str, key_column: str, caption_column: str) -> dict[str, list[str]]:
    """key -> candidates; a list column gives several, repeated keys add candidates in file order."""
    import fsspec
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
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


@dataclass
class ImportSpec:
    ann_dir: str
    captions: str
    key_column: str = "key"  # `key`, or `uid` to match the sample json's uid (DataComp)
    caption_column: str = "caption"
    captioner: str = "imported"
    overwrite: bool = False
    image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS


class ImportStage:
    def __init__(self, spec: ImportSpec):
        self.spec = spec
        self.table = None

    def __call__(self, url: str, progress=None) -> ShardReport:
        s = self.spec
        name = shard_name(url)
        out = ann.path_for(s.ann_dir, name)
        if exists(out) and not s.overwrite:
            return ShardReport(name, "skipped")  # its samples are not counted again
        if self.table is None:
            self.table = load_caption_table(s.captions, s.key_column, s.caption_column)
        rows, matched = [], 0
        for rec in iter_shard(url, ReadOptions(image_keys=s.image_keys)):
            if isinstance(rec, ReadFailure):
                rows.append(ann.error_row(rec.key, name, rec.reason))
                continue
            k = rec.key if s.key_column == "key" else str((rec.meta or {}).get(s.key_column))
            caps = self.table.get(k, [])
            matched += bool(caps)
            rows.append(ann.empty_row(rec.key, name, rec.raw_caption) | {"captions": caps, "captioner": s.captioner})
            if progress:
                progress(1)
        ann.write(out, rows)
        return ShardReport(name, "done", sum(r["key"] is not None for r in rows),
                           sum(r["status"] != "ok" for r in rows), info={"matched": matched})
