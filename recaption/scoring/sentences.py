"""Sentences of captions, column-wise (docs/formats.md#long-captions).

A caption is split after `.`, `!` or `?` (with any closing quotes or brackets right after it)
followed by white space, and at every line break; each piece is trimmed and empty pieces are
dropped. A text has at most MAX pieces: the rest of a longer one is its last piece, joined by one
space, so a hostile alt-text of a million full stops costs MAX text-encoder rows, not a million
(and a mix writes at most MAX sentence keys a caption). The rule is text only (no model, no
language), so annotate, where sentences are scored, and mix, where they are written as keys, split
every caption the same way. `SPLIT` names the rule in the settings a folder records: a changed
rule is a changed result.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SPLIT = "sentences-v2"  # v1 had no MAX
MAX = 32  # pieces a text is split into, at most: more than any caption a VLM writes has
_CUT = "\x00"  # never in a caption the splitter keeps: line breaks and sentence ends become it
_LINES = r"\s*\n\s*"
_ENDS = r"""([.!?]["'\)\]]*)\s+"""


def split(texts) -> pa.ListArray:
    """Every text's sentences (a list per text, null where the text is null)."""
    a = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else pa.array(texts, pa.string())
    a = pc.replace_substring(a.cast(pa.string()), _CUT, " ")
    a = pc.replace_substring_regex(a, _LINES, _CUT)
    a = pc.replace_substring_regex(a, _ENDS, "\\1" + _CUT)
    parts = pc.split_pattern(a, _CUT)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    lens = pc.fill_null(pc.list_value_length(parts), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(len(parts), dtype=np.int64), lens)
    keep = pc.greater(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False)
    counts = np.bincount(row[keep], minlength=len(parts))
    flat, row = flat.filter(pa.array(keep)), row[keep]
    if counts.size and counts.max() > MAX:
        flat, row, counts = _cap(flat, row, counts)
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat, mask=parts.is_null())


def _cap(flat: pa.Array, row: np.ndarray, counts: np.ndarray):
    """The pieces of texts with more than MAX, their MAX-th onwards joined into one (columnar)."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(row)) - starts[row]
    tail = rank >= MAX - 1
    long = np.flatnonzero(counts > MAX)
    tail &= np.isin(row, long)  # a text of exactly MAX keeps its last piece as it is
    n_tail = np.bincount(row[tail], minlength=len(counts))[long]
    joined = pc.binary_join(pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(n_tail)]).astype(np.int32)), flat.filter(pa.array(tail))), " ")
    head = ~tail
    pieces = pa.concat_arrays([flat.filter(pa.array(head)), joined])
    rows = np.concatenate([row[head], long])
    order = np.lexsort((np.concatenate([rank[head], np.full(len(long), MAX - 1)]), rows))
    counts = counts.copy()
    counts[long] = MAX
    return pieces.take(pa.array(order)), rows[order], counts


def join_kept(sentences: pa.ListArray, keep: np.ndarray) -> pa.Array:
    """Per text, its sentences where `keep` (one bool per flattened sentence) joined by one space;
    a text whose every sentence is dropped is the empty string, a null text stays null."""
    flat = pc.list_flatten(sentences)
    lens = pc.fill_null(pc.list_value_length(sentences), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(np.bincount(row[keep], minlength=len(lens)), out=offsets[1:])
    kept = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat.filter(pa.array(keep)),
                                    mask=sentences.is_null())
    return pc.binary_join(kept, " ")


def reduce(scores: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min, mean) of each text's run of `lens` consecutive sentence scores; NaN where a text has none."""
    n = len(lens)
    lo, mean = np.full(n, np.nan), np.full(n, np.nan)
    has = lens > 0
    if has.any():
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])[has]
        lo[has] = np.minimum.reduceat(scores, starts)
        mean[has] = np.add.reduceat(scores, starts) / lens[has]
    return lo, mean
