"""The mix-write stage: one output shard of a mix, written from its plan.

The plan (`recaption.mixing.plan`) names slices of input shards' kept samples; what each kept
sample gets (caption, source, scores) is read from the shard's decisions file, never decided
again. The input tar is read as raw blocks (`recaption.io.tarcopy`): members other than `txt` and
`json` (and `syn.txt` for `both`) are copied byte for byte, headers included, and the samples of
the shard that are not wanted are skipped, not read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io.shards import open_shard
from recaption.io.sources import shard_name
from recaption.io.tarcopy import iter_samples
from recaption.io.writer import is_done, write_shard
from recaption.mixing import caption_keys, recaption_field
from recaption.mixing.members import READ, kept_members
from recaption.mixing.plan import OutputPlan, Part

PROGRESS_EVERY = 256  # the only member read; the others are copied without a look


@dataclass
class WriteReport:
    """The outcome of one output shard: done, skipped (already written) or failed."""

    shard: str
    status: str
    samples: int = 0
    error: str | None = None


class MixWriteStage:
    """Writes one output shard from its plan; picklable, so any engine can run it."""

    def __call__(self, p, progress=None) -> WriteReport:
        if isinstance(p, dict):
            p = OutputPlan(**{**p, "parts": [Part(**x) for x in p["parts"]]})
        if is_done(p.out_dir, p.name):
            n = sum(x.end - x.start for x in p.parts)
            if progress:
                progress(n)
            return WriteReport(p.name, "skipped", n)
        try:
            n = write_shard(p.out_dir, p.name, self._samples(p, progress))["count"]
        except Exception as e:
            return WriteReport(p.name, "failed", error=f"{type(e).__name__}: {e}")
        return WriteReport(p.name, "done", n)

    def _samples(self, p: OutputPlan, progress=None):
        level = p.caption_keys
        extra = ["captions"] if caption_keys.needs_candidates(level) else []
        for part in p.parts:
            t = ann.read_table(part.decisions, columns=READ + extra)
            at = np.flatnonzero(t["kept"].to_numpy(zero_copy_only=False))[part.start : part.end]
            rows = t.take(at)  # at most one output shard of rows
            want = dict(zip(at.tolist(), zip(rows.to_pylist(), recaption_field.encode(rows, p.strategy),
                                             caption_keys.encode(rows, level))))
            found = 0
            with open_shard(part.url) as f:
                for pos, key, members in iter_samples(f, set(want)):
                    row, added, keys_text = want[pos]
                    if key != row["key"]:
                        raise RecaptionError(f"{part.url} changed since it was annotated (sample {pos}: "
                                             f"{key!r} vs {row['key']!r}); re-annotate it")
                    found += 1
                    yield self._sample(key, members, row, p.strategy, shard_name(part.url), added, level, keys_text)
                    if progress and found % PROGRESS_EVERY == 0:  # a worker's progress crosses a queue
                        progress(PROGRESS_EVERY)
            if progress and found % PROGRESS_EVERY:
                progress(found % PROGRESS_EVERY)
            if found != len(want):
                raise RecaptionError(f"{part.url}: {len(want) - found} kept samples could not be read back")

    @staticmethod
    def _sample(key: str, members, row: dict, strategy: str, shard: str, added: bytes | None = None,
                level: str = "none", keys_text: bytes | None = None):
        text = None
        for m in members:
            if m.field == "json":
                text = m.data
        meta, new = kept_members(row, strategy, text, added, level, keys_text)
        # every member in its place, raw; the new ones replace theirs, or follow in this order
        out = [(m.field, new.pop(m.field)) if m.field in new else m for m in members]
        out.extend(new.items())
        prow = {
            "key": key, "caption": row["caption"], "caption_source": row["caption_source"], "url": meta.get("url"),
            "raw_caption": row["raw_caption"], "synthetic_caption": row["synthetic_caption"],
            "clip_raw": row["clip_raw"], "clip_synthetic": row["clip_synthetic"], "sieve": row["sieve"],
            "blend": row["blend"], "source_shard": shard, "status": "success", "error_message": None,
            # img2dataset's columns, carried from the sample's json where it has them
            **{k: meta.get(k) for k in ("width", "height", "original_width", "original_height", "sha256")},
        }
        return key, out, prow
