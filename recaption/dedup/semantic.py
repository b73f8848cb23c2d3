"""Semantic duplicate pairs, SemDeDup-style: cluster the image embeddings, compare within clusters.

SemDeDup (Abbas et al. 2023, facebookresearch/SemDeDup) runs spherical k-means over the
embeddings and computes cosine similarities only between members of the same cluster, so near-
identical images (which land in the same cluster) are found without an all-pairs search. Here
k-means is faiss's (`faiss.Kmeans`, spherical, trained on an even sample of 40 rows a centroid),
each row is assigned to its nearest centroid by an exact inner-product search, and the rows are
spilled to temporary files grouped by cluster, so the driver holds one group of clusters at a time:

1. sample and train (one read of the embedding files);
2. assign and spill (a second read): float16 rows and their pool positions, per group of clusters;
3. per group: every pair inside each cluster with cosine >= the threshold, a block of rows at a
   time so a large cluster never builds its whole similarity matrix.

Which pairs it misses: near duplicates that k-means puts in different clusters (rare for
near-identical images, SemDeDup's premise). Which one survives is decided elsewhere
(`recaption.dedup.survivors`); SemDeDup's own rule keeps by distance to the centroid instead.
Results depend on the pool, the seed and faiss's thread count (k-means sums in parallel).
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Callable

import numpy as np

from recaption.errors import require

SAMPLE_PER_CLUSTER = 40  # faiss warns below 39 training points a centroid
BLOCK = 1 << 24  # similarity entries computed at once (64 MB of float32)
GROUP_BYTES = 64 << 20  # float16 embeddings per spilled group of clusters


def pairs(files: list[tuple[int, np.ndarray, np.ndarray]], load: Callable[[int], np.ndarray], cosine: float, *,
          cluster_size: int = 1000, seed: int = 0, tmpdir: str | None = None):
    """(a, b, cosine) for pool positions a < b in the same cluster whose embeddings have cosine >=
    `cosine`.

    `files`: (file index, rows in that annotation file, their pool positions); `load(file)`: the
    file's embeddings, one row per annotation row (rows of zeros, or NaN, were not embedded and
    are skipped)."""
    require("faiss", "dedup")
    import faiss

    n = sum(len(r) for _, r, _ in files)
    if n < 2:
        return _none()
    k = max(1, math.ceil(n / max(1, int(cluster_size))))
    centroids = _train(files, load, k, n, seed, faiss) if k > 1 else None
    with tempfile.TemporaryDirectory(prefix="recaption-semdedup-", dir=tmpdir) as spill:
        groups = _spill(files, load, centroids, k, spill, faiss)
        out = [_group_pairs(spill, g, cosine) for g in range(groups)]
    out = [o for o in out if len(o[0])]
    if not out:
        return _none()
    return tuple(np.concatenate([o[i] for o in out]) for i in range(3))


def _vectors(load, f: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A file's rows as unit float32 vectors, and which rows have one."""
    x = np.asarray(load(f))[rows].astype(np.float32)
    norm = np.linalg.norm(x, axis=1)
    ok = np.isfinite(norm) & (norm > 0)
    return x[ok] / norm[ok, None], ok


def _train(files, load, k: int, n: int, seed: int, faiss) -> np.ndarray:
    stride = max(1, n // (SAMPLE_PER_CLUSTER * k))
    sample, start = [], 0
    for f, rows, _ in files:
        pick = np.flatnonzero((start + np.arange(len(rows))) % stride == 0)
        start += len(rows)
        if len(pick):
            v, _ = _vectors(load, f, rows[pick])
            sample.append(v)
    x = np.concatenate(sample)
    k = min(k, len(x))
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=int(seed), spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=SAMPLE_PER_CLUSTER * 4)
    km.train(x)
    return km.centroids


def _spill(files, load, centroids, k: int, spill: str, faiss) -> int:
    """Assign every row to its cluster and append it to its group's files; returns the groups."""
    index = None
    handles, groups, d = None, 1, None
    try:
        for f, rows, pos in files:
            v, ok = _vectors(load, f, rows)
            if not len(v):
                continue
            if handles is None:
                d = v.shape[1]
                total = sum(len(r) for _, r, _ in files) * d * 2
                groups = max(1, min(k, math.ceil(total / GROUP_BYTES)))
                handles = [[open(os.path.join(spill, f"{g}.{part}"), "ab") for part in ("emb", "pos", "cl")]
                           for g in range(groups)]
                if centroids is not None:
                    index = faiss.IndexFlatIP(d)
                    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
            cl = np.zeros(len(v), dtype=np.int32) if index is None else index.search(v, 1)[1][:, 0].astype(np.int32)
            grp = (cl.astype(np.int64) * groups) // len(centroids if centroids is not None else [0])
            p = np.asarray(pos)[ok].astype(np.int64)
            for g in np.unique(grp):
                sel = grp == g
                emb, gp, gc = handles[g]
                emb.write(v[sel].astype(np.float16).tobytes())
                gp.write(p[sel].tobytes())
                gc.write(cl[sel].tobytes())
    finally:
        for h in handles or ():
            for x in h:
                x.close()
    if d is not None:
        with open(os.path.join(spill, "dim"), "w") as fh:
            fh.write(str(d))
    return groups if handles is not None else 0


def _group_pairs(spill: str, g: int, cosine: float):
    with open(os.path.join(spill, "dim")) as fh:
        d = int(fh.read())
    pos = np.fromfile(os.path.join(spill, f"{g}.pos"), dtype=np.int64)
    if len(pos) < 2:
        return _none()
    cl = np.fromfile(os.path.join(spill, f"{g}.cl"), dtype=np.int32)
    emb = np.fromfile(os.path.join(spill, f"{g}.emb"), dtype=np.float16).reshape(len(pos), d)
    order = np.lexsort((pos, cl))
    cl, pos, emb = cl[order], pos[order], emb[order]
    edges = np.flatnonzero(np.r_[True, cl[1:] != cl[:-1], True])
    out = []
    for s, e in zip(edges[:-1], edges[1:]):
        if e - s >= 2:
            out.append(_cluster_pairs(emb[s:e], pos[s:e], cosine))
    out = [o for o in out if len(o[0])]
    if not out:
        return _none()
    return tuple(np.concatenate([o[i] for o in out]) for i in range(3))


def _cluster_pairs(emb: np.ndarray, pos: np.ndarray, cosine: float):
    """Pairs i < j of one cluster with cosine >= threshold, a block of rows at a time."""
    n = len(emb)
    x = emb.astype(np.float32)
    # float16 storage rounds unit vectors: renormalise so a vector's cosine with itself is 1
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    step = max(1, BLOCK // n)
    out = []
    for a in range(0, n - 1, step):
        b = min(a + step, n - 1)
        sim = x[a:b] @ x[a + 1:].T  # row r against the rows after it
        r, c = np.nonzero(sim >= cosine)
        c_abs = c + a + 1
        keep = c_abs > r + a
        r, c, c_abs = r[keep], c[keep], c_abs[keep]
        out.append((pos[r + a], pos[c_abs], sim[r, c]))
    out = [o for o in out if len(o[0])]
    if not out:
        return _none()
    return tuple(np.concatenate([o[i] for o in out]) for i in range(3))


def _none():
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
