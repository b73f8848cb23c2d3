"""Write one output shard of a mix from its plan.

The plan (`recaption.mixing.plan`) names slices of input shards' kept samples; what each kept
sample gets (caption, source, scores) is read from the shard's decisions file, never decided
again. The input tar is read as raw blocks (`recaption.io.tarcopy`): members other than `txt` and
`json` (and `syn.txt` for `both`) are copied byte for byte, headers included, and the samples of
the shard that are not wanted are skipped, not read.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io.shards import open_shard
from recaption.io.sources import shard_name
from recaption.io.tarcopy import iter_samples
from recaption.io.writer import is_done, write_shard
from recaption.mixing import recaption_field
from recaption.mixing.plan import OutputPlan, Part

READ = ["key", "kept", "caption_source", "caption", "raw_caption", "synthetic_caption", "clip_raw",
        "clip_synthetic", "sieve", "blend", "captioner"]
PROGRESS_EVERY = 256  # the only member read; the others are copied without a look


@dataclass
class WriteReport:
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
        for part in p.parts:
            t = ann.read_table(part.decisions, columns=READ)
            at = np.flatnonzero(t["kept"].to_numpy(zero_copy_only=False))[part.start : part.end]
            rows = t.take(at)  # at most one output shard of rows
            want = dict(zip(at.tolist(), zip(rows.to_pylist(), recaption_field.encode(rows, p.strategy))))
            found = 0
            with open_shard(part.url) as f:
                for pos, key, members in iter_samples(f, set(want)):
                    row, added = want[pos]
                    if key != row["key"]:
                        raise RecaptionError(f"{part.url} changed since it was annotated (sample {pos}: "
                                             f"{key!r} vs {row['key']!r}); re-annotate it")
                    found += 1
                    yield self._sample(key, members, row, p.strategy, shard_name(part.url), added)
                    if progress and found % PROGRESS_EVERY == 0:  # a worker's progress crosses a queue
                        progress(PROGRESS_EVERY)
            if progress and found % PROGRESS_EVERY:
                progress(found % PROGRESS_EVERY)
            if found != len(want):
                raise RecaptionError(f"{part.url}: {len(want) - found} kept samples could not be read back")

    @staticmethod
    def _sample(key: str, members, row: dict, strategy: str, shard: str, added: bytes | None = None):
        text = None
        for m in members:
            if m.field == "json":
                text = m.data
        meta, new = kept_members(row, strategy, text, added)
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


def recaption_object(row: dict, strategy: str) -> dict:
    """The `recaption` json field of a kept sample, from its decisions row (scores there are null,
    never NaN); `recaption_field.encode` writes the same for many rows at once."""
    return {**{k: row[k] for k in recaption_field.FIELDS}, "strategy": strategy}


def kept_members(row: dict, strategy: str, json_text: bytes | None,
                 added: bytes | None = None) -> tuple[dict, dict[str, bytes]]:
    """What a kept sample gets from its decisions row: its json object, and the members that
    replace or join its own. `added` is the recaption field's json text when already encoded
    (`recaption_field.encode`, which the writer uses)."""
    meta, text = with_recaption(json_text, recaption_object(row, strategy), added)
    syn = row["synthetic_caption"]
    return meta, members(row["caption"].encode("utf-8"), None if syn is None else syn.encode("utf-8"), strategy, text)


def members(caption: bytes, synthetic: bytes | None, strategy: str, json_text: bytes) -> dict[str, bytes]:
    """The members a kept sample gets, in this order: `txt`, `json`, and `syn.txt` for `both`
    where there is a synthetic caption. The mixed tars and the overlay readers
    (`recaption.webdataset`) both build samples here."""
    new = {"txt": caption, "json": json_text}
    if strategy == "both" and synthetic is not None:
        new["syn.txt"] = synthetic
    return new


_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode  # one encoder, not one a call


def with_recaption(text: bytes | None, rc: dict, added: bytes | None = None) -> tuple[dict, bytes]:
    """The sample's json object and its text with `"recaption": rc` added as the last field. The
    original text is kept as it is and the field spliced in before its closing brace; where it
    holds a NaN or infinity (JSON has none: they become null), or already a `recaption` field
    (replaced), the object is written anew."""
    added = _ENCODE(rc).encode("utf-8") if added is None else added
    odd = []
    if not text:
        meta = {}
    elif b"NaN" in text or b"Infinity" in text:  # maybe inside a string: let the parser say
        meta = json.loads(text, parse_constant=lambda c: odd.append(c) or float(c))
    else:
        meta = json.loads(text)
    body = text.rstrip() if text else b""
    if text and not odd and "recaption" not in meta and body.endswith(b"}"):
        return meta, _splice(body, added)
    return meta, _ENCODE(_finite({**meta, "recaption": rc})).encode("utf-8")


def _splice(body: bytes, added: bytes) -> bytes:
    inner = body[:-1].rstrip()
    return inner + (b"" if inner.endswith(b"{") else b", ") + b'"recaption": ' + added + b"}"


# an escaped character from 0x60 to 0x7f (every lower-case letter) could spell a `recaption` key
_ESCAPED_LOWER = re.compile(rb"\\u00[67][0-9a-fA-F]")


def splice_recaption(text: bytes, added: bytes) -> bytes | None:
    """What `with_recaption` gives for `text`, without parsing it, where the text cannot hold a
    NaN, an infinity or a `recaption` field (not even one spelled with escapes); else None. The
    text must be a JSON object, as every kept sample's json was when it was annotated (the overlay
    readers check that a shard is unchanged)."""
    body = text.rstrip()
    if (body.endswith(b"}") and b"recaption" not in text and b"NaN" not in text and b"Infinity" not in text
            and not _ESCAPED_LOWER.search(text)):
        return _splice(body, added)
    return None


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x
