"""Per-shard image embeddings beside the annotation files, in clip-retrieval's layout.

For annotation file `ANN/NAME.parquet`:

    ANN/embeddings/img_emb/img_emb_NAME.npy         float16 [rows, d], one row per annotation row
    ANN/embeddings/metadata/metadata_NAME.parquet   one row per embedding row: image_path, key, shard, embedded

This is the folder layout clip-retrieval's `clip_inference` writes (`img_emb/img_emb_N.npy`,
L2-normalised float16, and `metadata/metadata_N.parquet` with rows aligned), so `ANN/embeddings`
is an embeddings folder for autofaiss, `clip-retrieval index` and embedding-reader's
`parquet_npy` reader as it is; `np.load` plus `faiss.IndexFlatIP.add` reads one file. Rows are
aligned with the annotation file, error rows included: a row whose image was not embedded is all
zeros, with `embedded` false (an index should leave such rows out). Both files are written whole or
not at all (`recaption.io.atomic`), the npy first; a shard's embeddings exist when both do and
their row counts agree. No model here: the caller hands in the vectors. Format:
docs/formats.md#embedding-files.
"""
from __future__ import annotations

import io
import json

from recaption.io.atomic import atomic_open, exists, join, local_path, open_url, write_bytes

FOLDER = "embeddings"
FORMAT_VERSION = 1
META_KEY = b"recaption.embeddings"


def npy_url(ann: str, name: str) -> str:
    """The embeddings of annotation file `ann/NAME.parquet`."""
    return join(ann, f"{FOLDER}/img_emb/img_emb_{name}.npy")


def metadata_url(ann: str, name: str) -> str:
    """The metadata parquet aligned with `npy_url(ann, name)`."""
    return join(ann, f"{FOLDER}/metadata/metadata_{name}.parquet")


def write(ann: str, name: str, vectors, keys, *, shard: str, embedded=None, settings: dict | None = None) -> None:
    """Write one shard's embeddings: `vectors` float [rows, d] aligned with the annotation rows;
    `keys` the rows' sample keys (None for a shard-level row); `embedded` which rows have a vector
    (default: finite rows that are not all zero). Vectors are L2-normalised, then stored as
    float16; `settings` (the model and its settings) go into the metadata file's footer."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recaption.io.atomic import makedirs

    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [rows, d], got shape {x.shape}")
    keys = list(keys)
    if len(keys) != len(x):
        raise ValueError(f"{len(x)} embedding rows for {len(keys)} annotation rows")
    norm = np.linalg.norm(x, axis=1)
    ok = np.isfinite(norm) & (norm > 0)
    if embedded is not None:
        ok &= np.asarray(embedded, dtype=bool)
    out = np.zeros(x.shape, dtype=np.float16)
    out[ok] = (x[ok] / norm[ok, None]).astype(np.float16)
    buf = io.BytesIO()
    np.save(buf, out, allow_pickle=False)
    for sub in ("img_emb", "metadata"):
        makedirs(join(ann, f"{FOLDER}/{sub}"))
    write_bytes(npy_url(ann, name), buf.getvalue())
    paths = [None if k is None else f"{shard}/{k}" for k in keys]
    table = pa.table({"image_path": pa.array(paths, pa.string()), "key": pa.array(keys, pa.string()),
                      "shard": pa.array([shard] * len(keys), pa.string()), "embedded": pa.array(ok)})
    meta = {"format_version": FORMAT_VERSION, "annotation": f"{name}.parquet", "rows": int(len(x)),
            "dim": int(x.shape[1]), "dtype": "float16", "normalized": True, "settings": settings or {}}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    with atomic_open(metadata_url(ann, name), "wb") as f:
        pq.write_table(table, f)


def remove(ann: str, name: str) -> bool:
    """Remove one shard's embeddings where recaption wrote them (the metadata file carries its
    footer); returns whether it did. A lone `.npy` (a write cut short) is left to be overwritten."""
    from recaption.io.atomic import remove as remove_url

    if not exists(metadata_url(ann, name)) or not settings(ann, name).get("format_version"):
        return False
    if exists(npy_url(ann, name)):
        remove_url(npy_url(ann, name))
    remove_url(metadata_url(ann, name))
    return True


def has(ann: str, name: str) -> bool:
    """Whether a shard's embeddings were written (both files present)."""
    return exists(npy_url(ann, name)) and exists(metadata_url(ann, name))


def read_vectors(ann: str, name: str, *, mmap: bool = True):
    """float16 [rows, d] of one shard (memory-mapped when local and `mmap`)."""
    import numpy as np

    url = npy_url(ann, name)
    path = local_path(url)
    if path is not None:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    with open_url(url, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def read_metadata(ann: str, name: str):
    """The metadata table of one shard (`image_path`, `key`, `shard`, `embedded`)."""
    import pyarrow.parquet as pq

    with open_url(metadata_url(ann, name), "rb") as f:
        return pq.read_table(f)


def settings(ann: str, name: str) -> dict:
    """What the metadata file's footer records: format version, rows, dim, dtype, settings."""
    import pyarrow.parquet as pq

    with open_url(metadata_url(ann, name), "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    return json.loads(meta.get(META_KEY, b"{}"))


def read(ann: str, name: str, *, mmap: bool = True):
    """(vectors float16 [rows, d], metadata table), checked to agree on their row count."""
    from recaption.errors import RecaptionError

    vectors, table = read_vectors(ann, name, mmap=mmap), read_metadata(ann, name)
    if len(vectors) != table.num_rows:
        raise RecaptionError(f"embeddings of {name}: {len(vectors)} vectors but {table.num_rows} metadata rows")
    return vectors, table
