"""Train on a mix without writing it: apply an overlay folder (`recaption mix ... --overlay`) to the
input shards as webdataset or Ray Data reads them.

    import webdataset as wds
    from recaption.webdataset import overlay

    ds = (wds.WebDataset(urls, shardshuffle=100).compose(overlay("s3://b/overlay"))
          .shuffle(1000).decode("pil").to_tuple("jpg", "txt"))

    from recaption.webdataset import ray_dataset
    ds = ray_dataset("s3://b/shards/", "s3://b/overlay")   # read_webdataset + the overlay per block

Samples come out as the mixed tars would hold them: dropped ones left out, `txt` the chosen caption,
`syn.txt` for `both`, and the `recaption` object in `json`. `captions=` puts a caption chosen
among the sample's caption keys (`mix --caption-keys`) into `txt` instead, fixed per sample and
epoch. Put the stage before `.decode()` (after it, samples get the types decoding the mixed
sample gives) and before sample shuffling, so that shards arrive one at a time:
each shard's small decisions file is loaded when its first sample arrives, and checked against the
shard it was made from. A shard without decisions, a key the decisions do not know, or a shard
whose size or mtime (ETag) changed is an error, never silently kept.
"""
from __future__ import annotations

from recaption.errors import RecaptionError
from recaption.overlay.reader import OverlayReader


class Overlay(OverlayReader):
    """A webdataset pipeline stage: `WebDataset(urls).compose(Overlay(folder))`, or one stage of a
    `wds.DataPipeline` after `tarfile_to_samples()`."""

    def __call__(self, src):
        apply = self.apply
        waiting = []  # the first samples, while none has told whether samples arrive decoded
        for sample in src:
            if waiting or not self._knows(sample):
                waiting.append(sample)
                if not self._knows(sample):
                    continue
            for s in waiting or [sample]:
                out = apply(s)
                if out is not None:
                    yield out
            waiting = []
        for s in waiting:  # none told: read as raw bytes (pass decoded=True where they are decoded)
            out = apply(s)
            if out is not None:
                yield out


class RayOverlay(OverlayReader):
    """A Ray Data batch function: `ds.map_batches(RayOverlay(folder), batch_format="pandas")` over
    `ray.data.read_webdataset(..., decoder=None)`; pyarrow and numpy batches work too. Rows are
    kept or dropped and `txt`, `json` (and `syn.txt` for `both`) set; other columns are untouched."""

    def __call__(self, batch):
        get = _column_getter(batch)
        urls, keys = get("__url__"), get("__key__")
        if urls is None or keys is None:
            raise RecaptionError("the overlay needs the __url__ and __key__ columns of read_webdataset")
        txt, js = get("txt"), get("json")
        keep, new = [], {"txt": [], "json": []}
        for i, (url, key) in enumerate(zip(urls, keys)):
            sample = {"__url__": url, "__key__": key}
            for name, col in (("txt", txt), ("json", js)):
                if col is not None and not _missing(col[i]):
                    sample[name] = col[i]
            out = self.apply(sample)
            for m in self.shard(url, key).extra_members:  # a column once any shard's strategy adds it
                new.setdefault(m, [None] * len(keep))
            if out is not None:
                keep.append(i)
                for k, v in new.items():
                    v.append(out.get(k))
        return _with_rows(batch, keep, new)


def overlay(folder: str, *, verify: str = "full", shards_in_memory: int = 4,
            storage_options: dict | str | None = None, captions=None, caption_probs=None, seed: int = 0,
            epoch=0, decoded: bool | None = None) -> Overlay:
    """The webdataset stage applying the overlay `folder`. `verify="size"` compares shard sizes
    only (for unchanged copies whose mtime differs); `shards_in_memory` bounds the decisions kept
    (one per shard being read; more where samples of many shards arrive interleaved).

    `captions` chooses `txt` among the caption keys the mix wrote (`--caption-keys`): `"K1;K2"`
    or a list (the first the sample has wins), or `{key: weight}` (`caption_probs`: the weights in
    the keys' order), open_clip's `--json-text-key` rule; the draw is fixed by `seed`, the sample
    and `epoch` (a number, `set_epoch`, or a shared value with `get_value()` or `.value`).
    `decoded` says whether samples arrive decoded (default: their members tell)."""
    return Overlay(folder, verify=verify, shards_in_memory=shards_in_memory, storage_options=storage_options,
                   captions=captions, caption_probs=caption_probs, seed=seed, epoch=epoch, decoded=decoded)


def ray_overlay(folder: str, **kw) -> RayOverlay:
    """The Ray Data batch function applying the overlay `folder` (options as `overlay`)."""
    return RayOverlay(folder, **kw)


def webdataset(input_spec, folder: str, *, overlay_options: dict | None = None, **wds_kw):
    """`wds.WebDataset` over INPUT's shards (folder, glob, brace pattern, list file) with the overlay
    composed right after the samples are read; keyword arguments go to `wds.WebDataset`."""
    import webdataset as wds

    from recaption.io.sources import shards_of

    wds_kw.setdefault("shardshuffle", False)
    return wds.WebDataset(shards_of(input_spec), **wds_kw).compose(overlay(folder, **(overlay_options or {})))


def ray_dataset(input_spec, folder: str, *, overlay_options: dict | None = None, **read_kw):
    """`ray.data.read_webdataset` over INPUT's shards, raw bytes, with the overlay applied to each
    block; keyword arguments go to `read_webdataset`."""
    from recaption.errors import require

    require("ray", "ray")
    import ray.data

    from recaption.io.sources import shards_of

    shards = shards_of(input_spec)
    read_kw.setdefault("decoder", None)
    # a block per shard: Ray then runs the overlay inside its read tasks (fused) instead of
    # splitting each shard into small blocks that cross the object store to a task of their own
    read_kw.setdefault("override_num_blocks", len(shards))
    ds = ray.data.read_webdataset(shards, **read_kw)
    return ds.map_batches(ray_overlay(folder, **(overlay_options or {})), batch_format="pandas")


# -- batches: pandas, pyarrow or numpy ----------------------------------------------------------
def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)  # pandas fills an absent member with NaN


def _column_getter(batch):
    if hasattr(batch, "column_names"):  # pyarrow
        return lambda c: batch.column(c).to_pylist() if c in batch.column_names else None
    if hasattr(batch, "iloc"):  # pandas
        return lambda c: batch[c].tolist() if c in batch.columns else None
    return lambda c: list(batch[c]) if c in batch else None


def _with_rows(batch, keep: list[int], new: dict[str, list]):
    """The batch's rows `keep`, with the columns `new` set (added at the end where absent)."""
    if hasattr(batch, "column_names"):
        import pyarrow as pa

        out = batch.take(pa.array(keep, pa.int64()))
        for k, v in new.items():
            arr = pa.array(v, type=None if any(x is not None for x in v) else pa.binary())
            if k in out.column_names:
                out = out.set_column(out.column_names.index(k), k, arr)
            else:
                out = out.append_column(k, arr)
        return out
    if hasattr(batch, "iloc"):
        out = batch.iloc[keep].reset_index(drop=True)
        for k, v in new.items():
            out[k] = v
        return out
    import numpy as np

    idx = np.asarray(keep, dtype=np.int64)
    out = {k: np.asarray(v)[idx] for k, v in batch.items()}
    for k, v in new.items():
        a = np.empty(len(v), dtype=object)
        a[:] = v
        out[k] = a
    return out
