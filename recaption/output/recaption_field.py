"""The `recaption` json field of kept samples, encoded a column at a time.

Byte for byte what `json.JSONEncoder(ensure_ascii=False, allow_nan=False)` writes for the object
`mix.recaption_object` builds: strings as json strings, floats as Python's repr, missing values as
null. Arrow formats nearly every value; the few it would write differently (strings holding a
quote, a backslash or a control character; integral, tiny or huge floats, which Arrow writes
without a point or in another notation) go through Python's own encoder, row by row. Both the
writer of mixed tars and the overlay readers take the field from here, so their bytes agree.
"""
from __future__ import annotations

from json.encoder import encode_basestring

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FIELDS = ("raw_caption", "synthetic_caption", "caption_source", "clip_raw", "clip_synthetic", "sieve", "blend",
          "captioner")  # then "strategy": the object's keys, in order
_NEEDS_ESCAPE = r'[\x00-\x1f"\\]'  # what encode_basestring changes (non-ASCII stays as it is)


def json_strings(col: pa.Array) -> pa.Array:
    """Each string of `col` as json text, as Python's encoder writes it (null stays null)."""
    return _strings(col)


def _strings(col: pa.Array) -> pa.Array:
    quoted = pc.binary_join_element_wise('"', col, '"', "")
    needs = pc.match_substring_regex(col, _NEEDS_ESCAPE).fill_null(False).to_numpy(zero_copy_only=False)
    if needs.any():
        idx = np.flatnonzero(needs)
        fixed = pa.array([encode_basestring(v) for v in col.take(pa.array(idx)).to_pylist()], pa.string())
        quoted = pc.replace_with_mask(quoted, pa.array(needs), fixed)
    return quoted


def _floats(col: pa.Array) -> pa.Array:
    text = pc.cast(col, pa.string())
    # Arrow and repr give the same shortest digits; the notation differs for integral values
    # (`1` vs `1.0`), below 1e-4 (fixed vs exponent) and from 1e15 up: those rows take repr
    plain = pc.and_(pc.and_(pc.match_substring(text, "."), pc.invert(pc.match_substring(text, "e"))),
                    pc.greater_equal(pc.abs(col), 1e-4))
    other = pc.and_(pc.is_valid(col), pc.invert(plain)).to_numpy(zero_copy_only=False)
    if other.any():
        idx = np.flatnonzero(other)
        fixed = pa.array([repr(v) for v in col.take(pa.array(idx)).to_pylist()], pa.string())
        text = pc.replace_with_mask(text, pa.array(other), fixed)
    return text


def encode(t: pa.Table, strategy: str) -> list[bytes]:
    """The field's json text for every row of `t` (decisions columns; floats null, never NaN)."""
    if not len(t):
        return []
    parts = []
    for i, name in enumerate(FIELDS):
        col = t[name].combine_chunks()
        if pa.types.is_floating(col.type):
            text = _floats(col.cast(pa.float64()))
        elif pa.types.is_null(col.type):
            text = pa.nulls(len(col), pa.string())
        else:
            text = _strings(col.cast(pa.string()))
        parts += [("{" if i == 0 else ", ") + encode_basestring(name) + ": ", pc.fill_null(text, "null")]
    parts += [', "strategy": ' + encode_basestring(strategy) + "}"]
    return pc.binary_join_element_wise(*parts, "").cast(pa.binary()).to_pylist()
