"""The embedding rule's mechanics on random vectors with planted near-duplicates (random vectors
are nearly orthogonal, so only the planted copies pass a high cosine), read back from the
embedding files as the pool pass reads them."""
from __future__ import annotations

import numpy as np
import pytest

from recaption.io import embeddings as E
from recaption.dedup import duplicates as D
from recaption.dedup import semantic
from tests.dedup.test_survivors import one_at_a_time

pytest.importorskip("faiss")

FILES, ROWS, DIM = 6, 300, 64


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Six embedding files; 60 groups of 2-3 copies (noise 0.02 a coordinate: cosine ~0.97+)
    spread over the files; every tenth row of the first file not embedded (zeros)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(FILES * ROWS, DIM)).astype(np.float32)
    groups, free = [], iter(rng.permutation(FILES * ROWS).tolist())
    for _ in range(60):  # disjoint groups
        members = np.array([next(free) for _ in range(int(rng.integers(2, 4)))])
        for m in members[1:]:
            x[m] = x[members[0]] + rng.normal(scale=0.02, size=DIM)
        groups.append(members)
    x[0:ROWS:10] = 0
    ann = str(tmp_path_factory.mktemp("ann"))
    for f in range(FILES):
        part = x[f * ROWS:(f + 1) * ROWS]
        E.write(ann, f"{f:05d}", part, [str(i) for i in range(ROWS)], shard=f"{f:05d}")
    return ann, x, groups


def run(ann, cosine=0.9, cluster_size=200, order=range(FILES), score=None):
    cfg = D.DedupConfig(exact=False, phash_k=None, cosine=cosine, cluster_size=cluster_size, score=score)
    dup = D.Duplicates(cfg)
    rng = np.random.default_rng(1)
    for f in order:
        scores = rng.random(ROWS).astype(np.float32) if score else None
        dup.add(f, D.FileKeys(np.arange(ROWS, dtype=np.int32), score=scores))
    return dup.run(embeddings=lambda f: E.read_vectors(ann, f"{f:05d}"))


def flat(result) -> dict:
    out = {}
    for f in range(FILES):
        d = result.file(f)
        for r, pf, pr, v in zip(d.rows, d.partner_file, d.partner_row, d.value):
            out[f * ROWS + int(r)] = (int(pf) * ROWS + int(pr), float(v))
    return out


def test_planted_copies_are_found_across_files_and_nothing_else(planted, monkeypatch):
    ann, x, groups = planted
    monkeypatch.setattr(semantic, "GROUP_BYTES", 20_000)  # several spill groups of clusters
    got = flat(run(ann))
    v = np.asarray(np.concatenate([E.read_vectors(ann, f"{f:05d}") for f in range(FILES)]), dtype=np.float32)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    i, j = np.nonzero(np.triu(sim >= 0.9, 1))
    want, _ = one_at_a_time(np.arange(len(v)), i, j, sim[i, j])  # brute force, one at a time
    assert {r: p for r, (p, _) in got.items()} == {int(r): int(want[r]) for r in np.flatnonzero(want >= 0)}
    whole = [g for g in groups if all(x[m].any() for m in g)]
    assert len(whole) >= 50
    assert all(len(set(g.tolist()) - set(got)) == 1 for g in whole)  # one survivor a group
    embedded = [sum(bool(x[m].any()) for m in g) for g in groups]
    assert len(got) == sum(max(0, e - 1) for e in embedded)  # and nothing else dropped
    assert any(p // ROWS != r // ROWS for r, (p, _) in got.items())  # partners in other files
    assert all(0.9 <= c <= 1.0001 for _, c in got.values())


def test_unembedded_rows_are_never_duplicates(planted):
    ann, x, _ = planted
    got = flat(run(ann))
    zero = set(np.flatnonzero(~x.any(axis=1)).tolist())
    assert zero and not zero & set(got) and not zero & {p for p, _ in got.values()}


def test_the_same_pool_gives_the_same_pairs_and_partners_are_kept(planted):
    ann, _, _ = planted
    a, b = flat(run(ann)), flat(run(ann, order=reversed(range(FILES))))
    assert a == b
    assert not {p for p, _ in a.values()} & set(a)  # every partner survives


def test_a_score_picks_the_survivor(planted):
    ann, _, _ = planted
    by_order, by_score = flat(run(ann)), flat(run(ann, score="score"))
    assert len(by_score) == len(by_order)  # the same groups, found either way
    assert set(by_score) != set(by_order)  # but other members kept


def test_without_faiss_the_rule_says_which_extra(monkeypatch):
    import importlib.util

    from recaption.errors import MissingExtra

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    with pytest.raises(MissingExtra, match=r"recaption\[dedup\]"):
        semantic.pairs([(0, np.arange(3), np.arange(3))], lambda f: np.eye(3), 0.9)


def test_rules_run_in_turn_each_on_what_the_earlier_kept(planted):
    """The first 20 planted groups are also byte copies: the sha256 rule drops their copies, and the
    embedding rule neither drops them again nor names them as partners. (One cluster here, so the
    two runs compare the same pairs.)"""
    ann, x, groups = planted
    n = FILES * ROWS
    sha = np.arange(n, dtype=np.uint64)
    for g in groups[:20]:
        sha[g] = sha[g.min()]
    cfg = D.DedupConfig(exact=True, phash_k=None, cosine=0.9, cluster_size=n)
    dup = D.Duplicates(cfg)
    for f in range(FILES):
        s = slice(f * ROWS, (f + 1) * ROWS)
        dup.add(f, D.FileKeys(np.arange(ROWS, dtype=np.int32), sha[s], np.zeros(ROWS, np.uint64),
                              np.ones(ROWS, bool)))
    result = dup.run(embeddings=lambda f: E.read_vectors(ann, f"{f:05d}"))
    exact = sum(len(g) - 1 for g in groups[:20])
    assert result.counts["sha256"] == exact
    embedded = [sum(bool(x[m].any()) for m in g) for g in groups[:20]]
    alone = len(flat(run(ann, cluster_size=n)))
    assert result.counts["embedding"] == alone - sum(max(0, e - 1) for e in embedded)
    assert result.candidates["embedding"] == n - exact
    by_exact = {f * ROWS + int(r) for f in range(FILES) for r, c in zip(result.file(f).rows, result.file(f).code)
                if c == D.EXACT}
    named = {int(pf) * ROWS + int(pr) for f in range(FILES) for pf, pr, c in
             zip(result.file(f).partner_file, result.file(f).partner_row, result.file(f).code) if c == D.EMBEDDING}
    assert not by_exact & named
