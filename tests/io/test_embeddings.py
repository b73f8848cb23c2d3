"""Per-shard embedding files: clip-retrieval's img_emb/ + metadata/ layout, rows aligned with the
annotation file, float16 unit vectors, written whole or not at all."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from recaption.io import embeddings as E


def vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32) * 3


def test_round_trip_is_aligned_unit_float16(tmp_path):
    ann = str(tmp_path / "ann")
    x = vectors(5)
    x[2] = 0  # a row whose image was not embedded
    E.write(ann, "00001", x, ["a", "b", "c", "d", None], shard="00001", settings={"model": "ViT-B-32"})
    v, meta = E.read(ann, "00001")
    assert v.dtype == np.float16 and v.shape == (5, 16)
    assert np.allclose(np.linalg.norm(v[[0, 1, 3, 4]].astype(np.float32), axis=1), 1, atol=1e-3)
    assert np.allclose(v[0], x[0] / np.linalg.norm(x[0]), atol=1e-3)
    assert not v[2].any()
    assert meta.column("image_path").to_pylist() == ["00001/a", "00001/b", "00001/c", "00001/d", None]
    assert meta.column("embedded").to_pylist() == [True, True, False, True, True]
    s = E.settings(ann, "00001")
    assert s["rows"] == 5 and s["dim"] == 16 and s["dtype"] == "float16" and s["settings"] == {"model": "ViT-B-32"}
    assert s["annotation"] == "00001.parquet"
    assert E.has(ann, "00001") and not E.has(ann, "00002")


def test_the_layout_is_clip_retrievals_embeddings_folder(tmp_path):
    """img_emb/img_emb_N.npy beside metadata/metadata_N.parquet: readers that pair the two folders'
    sorted file lists (embedding-reader's parquet_npy, clip-retrieval index) pair them right, and
    an inner-product index built from the npy files finds each image's own row."""
    faiss = pytest.importorskip("faiss")
    ann = str(tmp_path / "ann")
    names = ["00000", "00001", "00001-b", "00002"]
    for i, name in enumerate(names):
        E.write(ann, name, vectors(4, seed=i), [f"k{j}" for j in range(4)], shard=name)
    root = tmp_path / "ann" / "embeddings"
    npys = sorted((root / "img_emb").glob("*.npy"))
    metas = sorted((root / "metadata").glob("*.parquet"))
    assert sorted(p.name for p in npys) == sorted(f"img_emb_{n}.npy" for n in names)
    assert [m.name.removeprefix("metadata_").removesuffix(".parquet") for m in metas] == \
        [n.name.removeprefix("img_emb_").removesuffix(".npy") for n in npys]
    allv = np.concatenate([np.load(p) for p in npys]).astype(np.float32)
    paths = sum((pq.read_table(m).column("image_path").to_pylist() for m in metas), [])
    index = faiss.IndexFlatIP(allv.shape[1])
    index.add(allv)
    _, nearest = index.search(allv, 1)
    assert (nearest[:, 0] == np.arange(len(allv))).all()
    stems = [n.name.removeprefix("img_emb_").removesuffix(".npy") for n in npys]
    assert paths == [f"{s}/k{j}" for s in stems for j in range(4)]  # row i of the npy files is row i here


def test_a_mismatch_writes_nothing(tmp_path):
    ann = str(tmp_path / "ann")
    with pytest.raises(ValueError, match="3 embedding rows for 2 annotation rows"):
        E.write(ann, "x", vectors(3), ["a", "b"], shard="x")
    assert not (tmp_path / "ann").exists() or not any((tmp_path / "ann").rglob("*.np*"))


def test_remote_style_read_without_mmap(tmp_path):
    ann = str(tmp_path / "ann")
    E.write(ann, "s", vectors(3), ["a", "b", "c"], shard="s")
    v = E.read_vectors(ann, "s", mmap=False)
    assert isinstance(v, np.ndarray) and not isinstance(v, np.memmap) and v.shape == (3, 16)
    footer = json.loads(pq.read_schema(str(tmp_path / "ann/embeddings/metadata/metadata_s.parquet"))
                        .metadata[E.META_KEY])
    assert footer["format_version"] == 1 and footer["normalized"] is True
