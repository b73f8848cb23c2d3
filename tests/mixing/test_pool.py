"""The pool pass over annotation files: statistics, exact thresholds and outcome counts equal
the mixing rules applied to all rows at once, whichever way the files are mapped (threads with or
without the column cache, or Ray tasks)."""
import re
import statistics
from collections import Counter

import pytest

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.mixing.compare import strategy_table
from recaption.engines.local import Threads
from recaption.mixing.files import Cache
from recaption.mixing.pool import PoolSource, dry_counts, finish_pool, pool_pass
from recaption.mixing.strategies import MixConfig
from tests.helpers import strategy_names
from tests.mixing import oracle

N_FILES = 5


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    """Five annotation files (one with a shard error row, one empty) and a sixth shard without one."""
    d = tmp_path_factory.mktemp("ann")
    rows = []
    for i in range(N_FILES):
        name = f"{i:05d}"
        part = oracle.random_rows(0 if i == 3 else 700, seed=i, shard=name, shard_error=(i == 2))
        ann.write(str(d / f"{name}.parquet"), part)
        rows += ann.read_rows(str(d / f"{name}.parquet"))  # float32, as the pool pass sees them
    shards = [f"/nowhere/{i:05d}.tar" for i in range(N_FILES + 1)]
    return d, shards, rows


def expected_counts(rows, cfg):
    want, t, (mm_s, mm_c) = oracle.expected(rows, cfg)
    kinds = Counter(w for w, _ in want)
    dropped = Counter()
    for (w, why), r in zip(want, rows):
        if w == "drop":
            if why in ("error", "shard error"):
                why = r["error"] or ("error" if r["key"] else "read: shard error")
                why = re.sub(r"(?<![\w.])\d+(?!\w)", "#", why)  # a reason's numbers as #, its words as they are
            dropped[why] += 1
    return kinds, dropped, t, (mm_s, mm_c)


@pytest.mark.parametrize("cfg", oracle.CONFIGS, ids=lambda c: f"{c.strategy}-{c.threshold}-{c.fraction}-"
                                                          f"{c.filter_synthetic}-{c.alpha}")
def test_pool_pass_counts_and_threshold(pool_dir, cfg):
    d, shards, rows = pool_dir
    pool = pool_pass(shards, str(d), cfg)
    counts, n_out = dry_counts(pool, cfg)
    kinds, dropped, t, (mm_s, mm_c) = expected_counts(rows, cfg)
    assert pool.numbers.threshold == t
    assert pool.ranges == {"clip_raw": list(mm_c), "sieve": list(mm_s)}
    assert counts["read"] == sum(r["key"] is not None for r in rows)
    assert counts["errors"] == sum(r["key"] is not None and r["status"] != "ok" for r in rows)
    assert (counts["raw"], counts["synthetic"]) == (kinds["raw"], kinds["synthetic"])
    assert counts["dropped"] == dict(dropped)
    assert pool.captioners == ["m"]
    assert counts["shard_errors"] == [{"shard": "00005", "error": "no annotation file (shard not annotated)"},
                                      {"shard": "00002", "error": "read: truncated or corrupt tar (x)"}]
    assert n_out == -(-counts["kept"] // cfg.samples_per_shard)


def test_cache_and_mappers_give_the_same_pool(pool_dir):
    d, shards, _ = pool_dir
    cfg = oracle.CONFIGS[7]  # threshold 0.3 + filter: reads candidates
    results = []
    for mapper, budget in ((None, None), (Threads(1), None), (None, 0), (None, 20_000)):
        src = PoolSource.of_shards(shards, str(d), mapper)
        if budget is not None:
            src.cache = Cache(budget)  # 0: nothing kept, every pass reads again; 20 kB: some files
        pool = finish_pool(src.stats(), cfg)
        results.append((pool.numbers, pool.ranges, dry_counts(pool, cfg)))
        if budget == 20_000:
            assert 0 < len(src.cache.cols) < N_FILES
    assert all(r == results[0] for r in results)


@pytest.mark.slow
def test_ray_tasks_give_the_same_pool(pool_dir, ray_local):
    from recaption.engines import Execution, mapper

    d, shards, _ = pool_dir
    ruled = MixConfig("threshold", fraction=0.3, filters=["min-clip-raw=0.1"]).validate()  # filters map too
    for cfg in (oracle.CONFIGS[7], oracle.CONFIGS[11], ruled):
        local = pool_pass(shards, str(d), cfg)
        remote = pool_pass(shards, str(d), cfg, mapper(Execution(engine="ray")))
        assert remote.source.cache is None  # the files are read where the tasks run
        assert remote.numbers == local.numbers and remote.ranges == local.ranges
        assert dry_counts(remote, cfg) == dry_counts(local, cfg)
        assert remote.filters == local.filters


def test_no_annotation_file_is_one_error(tmp_path):
    with pytest.raises(RecaptionError, match="no annotation files"):
        pool_pass(["/x/00000.tar"], str(tmp_path), oracle.CONFIGS[0])


def test_strategy_table_is_exact(pool_dir):
    d, _, rows = pool_dir
    table = {r["strategy"]: r for r in strategy_table(PoolSource.of_folder(str(d), [f"{i:05d}" for i in range(5)]),
                                                      fraction=0.3)}
    assert set(table) == set(strategy_names())
    for s, cfg in (("raw", oracle.CONFIGS[0]), ("threshold", oracle.CONFIGS[7]), ("sieve", oracle.CONFIGS[11])):
        cfg = type(cfg)(s, fraction=0.3, filter_synthetic=(s == "threshold"))
        want, t, mm = oracle.expected(rows, cfg)
        written = [r["clip_raw"] if w == "raw" else oracle.synthetic(r)[1] for (w, _), r in zip(want, rows)
                   if w != "drop"]
        written = [x for x in written if oracle.scored(x)]
        row = table[s]
        assert row["threshold"] == t
        assert row["kept"] == sum(w != "drop" for w, _ in want)
        assert row["dropped"] == sum(w == "drop" and why != "shard error" for w, why in want)
        assert row["median_clip_written"] == statistics.median(written)
        assert row["mean_clip_written"] == pytest.approx(statistics.fmean(written), rel=1e-12)


def paired(rows):
    """The rows as recaption's own scoring leaves them: one CLIP score per candidate."""
    out = []
    for r in rows:
        r = dict(r)
        if len(r["clip_captions"]) != len(r["captions"]):
            r["clip_captions"] = [0.2] * len(r["captions"])
        out.append(r)
    return out


GROUPS = {"captions": {"model": "m"}, "clip": {"model": "c"}}


@pytest.mark.parametrize("cfg", [oracle.CONFIGS[4], oracle.CONFIGS[7], oracle.CONFIGS[17]],
                         ids=["synthetic", "threshold-filter", "synthetic-fraction-0"])
def test_files_that_record_their_clip_group_are_counted_without_their_candidate_text(tmp_path, cfg,
                                                                                   monkeypatch):
    """Where the file says its scores were computed on its captions, the candidates' count comes
    from clip_captions (the text, the costliest column, is not read): the same outcomes."""
    from recaption.io import annotations as ann_io

    rows = paired(oracle.random_rows(1500, seed=9))
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    ann_io.write(str(tmp_path / "with" / "00000.parquet"), rows, GROUPS)
    ann_io.write(str(tmp_path / "without" / "00000.parquet"), rows)
    read = []
    real = ann_io.read
    monkeypatch.setattr(ann_io, "read", lambda *a, **k: read.append(t := real(*a, **k)) or t)
    fast = pool_pass(["/x/00000.tar"], str(tmp_path / "with"), cfg)
    fast_counts = dry_counts(fast, cfg)
    assert read and all("captions" not in t.column_names for t in read)
    exact = pool_pass(["/x/00000.tar"], str(tmp_path / "without"), cfg)
    assert fast.numbers == exact.numbers and fast_counts == dry_counts(exact, cfg)
