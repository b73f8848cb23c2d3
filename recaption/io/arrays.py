"""Arrow columns as numpy, the few ways every room needs them (the mix's columns and filters, the
duplicate rules, the span writer): one array however the column is chunked, and values with a
mask of which are known. Missing scores are `scoring.blend.scores`' business, not this module's."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def one(col) -> pa.Array:
    """A column as one array (no copy when it is one chunk already, as a file's usually is)."""
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def bools(col) -> np.ndarray:
    """A boolean column as numpy, null as False."""
    return one(pc.fill_null(col, False)).to_numpy(zero_copy_only=False)


def valid(col) -> np.ndarray:
    """Where a column holds a value (not null), as numpy booleans."""
    return one(col).is_valid().to_numpy(zero_copy_only=False)


def numbers(col) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64, known) of a numeric column; null and NaN count as not known (value 0)."""
    col = one(col)
    x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    has = valid(col) & ~np.isnan(x)
    return np.where(has, x, 0.0), has


def ints(col, missing: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(values as int64, known) of an integer column; null reads as `missing`."""
    col = one(col)
    return pc.fill_null(col, missing).to_numpy(zero_copy_only=False).astype(np.int64, copy=False), valid(col)
