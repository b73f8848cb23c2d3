"""Train on a mix without writing it: apply an overlay folder (`recaption mix ... --overlay`) to the
input shards as webdataset or Ray Data reads them.

    import webdataset as wds
    from recaption.webdataset import overlay

    ds = (wds.WebDataset(urls, shardshuffle=100).compose(overlay("s3://b/overlay"))
          .shuffle(1000).decode("pil").to_tuple("jpg", "txt"))

    from recaption.webdataset import ray_dataset
    ds = ray_dataset("s3://b/shards/", "s3://b/overlay")   # read_webdataset + the overlay per block

Samples come out as the mixed tars would hold them: dropped ones left out, `txt` the chosen caption,
`syn.txt` for `both`, and the `recaption` object in `json`. Put the stage before `.decode()` (it
also takes decoded `txt`/`json`) and before sample shuffling, so that shards arrive one at a time:
each shard's small decisions file is loaded when its first sample arrives, and checked against the
shard it was made from. A shard without decisions, a key the decisions do not know, or a shard
whose size or mtime (ETag) changed is an error, never silently kept.
"""
from __future__ import annotations

from recaption.mixing.overlay import OverlayReader


class Overlay(OverlayReader):
    """A webdataset pipeline stage: `WebDataset(urls).compose(Overlay(folder))`, or one stage of a
    `wds.DataPipeline` after `tarfile_to_samples()`."""

    def __call__(self, src):
        apply = self.apply
        for sample in src:
            out = apply(sample)
            if out is not None:
                yield out


class RayOverlay(OverlayReader):
    """A Ray Data batch function: `ds.map_batches(RayOverlay(folder), batch_format="pandas")` over
    `ray.data.read_webdataset(..., decoder=None)`; also takes pyarrow and numpy batches."""

    def __call__(self, batch):
        rows, kind = _rows(batch)
        out = [r for r in map(self.apply, rows) if r is not None]
        names = list(_names(batch))
        for r in out:  # members the overlay adds (txt, json, syn.txt), after the read ones
            names += [k for k in r if k not in names]
        both = any(self.shard(u).strategy == "both" for u in {r["__url__"] for r in rows})  # loaded by apply
        if both and "syn.txt" not in names:
            names.append("syn.txt")  # every block of a `both` overlay has the column
        for k in ("txt", "json"):
            if k not in names:
                names.append(k)
        return _batch(out, names, kind)


def overlay(folder: str, *, verify: str = "full", shards_in_memory: int = 4,
            storage_options: dict | str | None = None) -> Overlay:
    """The webdataset stage applying the overlay `folder`. `verify="size"` compares shard sizes
    only (for unchanged copies whose mtime differs); `shards_in_memory` bounds the decisions kept
    (one per shard being read; more where samples of many shards arrive interleaved)."""
    return Overlay(folder, verify=verify, shards_in_memory=shards_in_memory, storage_options=storage_options)


def ray_overlay(folder: str, **kw) -> RayOverlay:
    """The Ray Data batch function applying the overlay `folder` (options as `overlay`)."""
    return RayOverlay(folder, **kw)


def webdataset(input_spec, folder: str, *, overlay_options: dict | None = None, **wds_kw):
    """`wds.WebDataset` over INPUT's shards (folder, glob, brace pattern, list file) with the overlay
    composed right after the samples are read; keyword arguments go to `wds.WebDataset`."""
    import webdataset as wds

    from recaption.api import shards_of

    wds_kw.setdefault("shardshuffle", False)
    return wds.WebDataset(shards_of(input_spec), **wds_kw).compose(overlay(folder, **(overlay_options or {})))


def ray_dataset(input_spec, folder: str, *, overlay_options: dict | None = None, **read_kw):
    """`ray.data.read_webdataset` over INPUT's shards, raw bytes, with the overlay applied to each
    block; keyword arguments go to `read_webdataset`."""
    from recaption.errors import require

    require("ray", "ray")
    import ray.data

    from recaption.api import shards_of

    read_kw.setdefault("decoder", None)
    ds = ray.data.read_webdataset(shards_of(input_spec), **read_kw)
    return ds.map_batches(ray_overlay(folder, **(overlay_options or {})), batch_format="pandas")


# -- batches as rows and back ----------------------------------------------------------------
def _names(batch):
    if hasattr(batch, "column_names"):  # pyarrow (its `columns` are the arrays)
        return batch.column_names
    return batch.columns if hasattr(batch, "columns") else batch.keys()


def _missing(v):
    return v is None or (isinstance(v, float) and v != v)  # pandas fills an absent member with NaN


def _rows(batch):
    """A batch as dicts of the members each row has, and its kind."""
    if hasattr(batch, "to_dict") and hasattr(batch, "iloc"):
        recs, kind = batch.to_dict("records"), "pandas"
    elif hasattr(batch, "to_pylist"):
        recs, kind = batch.to_pylist(), "pyarrow"
    else:
        cols = {k: list(v) for k, v in batch.items()}
        recs, kind = [dict(zip(cols, vals)) for vals in zip(*cols.values())], "numpy"
    return [{k: v for k, v in r.items() if not _missing(v)} for r in recs], kind


def _batch(rows: list[dict], names: list[str], kind: str):
    cols = {k: [r.get(k) for r in rows] for k in names}
    if kind == "pandas":
        import pandas as pd

        return pd.DataFrame(cols, columns=names)
    if kind == "pyarrow":
        import pyarrow as pa

        return pa.table({k: pa.array(v, type=pa.binary() if not any(x is not None for x in v) else None)
                         for k, v in cols.items()})
    import numpy as np

    out = {}
    for k, v in cols.items():
        a = np.empty(len(v), dtype=object)
        a[:] = v
        out[k] = a
    return out
