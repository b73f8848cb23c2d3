"""Plan and write: output shards are fixed runs of kept samples; every row is decided once into
OUT/_decisions/NAME.parquet and the writer follows those files, never the annotations again."""
import json
import math
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest

from recaption import api
from recaption.engines import Execution
from recaption.io import annotations as ann
from recaption.stages.write_mix import MixWriteStage
from recaption.mixing.plan import Part, assign, decisions_path, plan, plan_dict, read_meta
from recaption.mixing.pool import pool_pass
from recaption.mixing.strategies import MixConfig
from tests.helpers import annotate_randomly, dropped, read_output
from tests.helpers import cli

QUIET = Execution(quiet=True)


def test_assign_cuts_runs_of_kept_samples():
    kept = [("a", "a.tar", "a.d", 5), ("b", "b.tar", "b.d", 0), ("c", "c.tar", "c.d", 2), ("d", "d.tar", "d.d", 3)]
    plans = assign(kept, MixConfig("raw", samples_per_shard=3), "out")
    assert [p.name for p in plans] == ["00000", "00001", "00002", "00003"]
    assert [[(x.url, x.start, x.end) for x in p.parts] for p in plans] == [
        [("a.tar", 0, 3)], [("a.tar", 3, 5), ("c.tar", 0, 1)], [("c.tar", 1, 2), ("d.tar", 0, 2)], [("d.tar", 2, 3)]]
    assert sum(x.end - x.start for p in plans for x in p.parts) == 10
    exact = assign([("a", "a.tar", "a.d", 6)], MixConfig("raw", samples_per_shard=3), "out")
    assert [[(x.start, x.end) for x in p.parts] for p in exact] == [[(0, 3)], [(3, 6)]]
    same = assign(kept, MixConfig("raw", keep_sharding=True), "out")
    assert [(p.name, p.parts) for p in same] == [(n, [Part(u, d, 0, k)]) for n, u, d, k in kept]
    assert assign([], MixConfig("raw"), "out") == []


@pytest.fixture(scope="module")
def random_ann(shard_dir, tmp_path_factory):
    return annotate_randomly(shard_dir, tmp_path_factory.mktemp("rand") / "ann")


@pytest.mark.parametrize("cfg", [MixConfig("threshold", fraction=0.5, samples_per_shard=4),
                                 MixConfig("both", samples_per_shard=7),
                                 MixConfig("synthetic", threshold=0.2, keep_sharding=True)],
                         ids=["threshold", "both", "synthetic"])
def test_decisions_files_are_what_is_written(shard_dir, random_ann, tmp_path, cfg):
    out = tmp_path / "out"
    s = api.mix(str(shard_dir), str(random_ann), str(out), cfg, execution=QUIET)
    got, drops = read_output(out), dropped(out)
    n_rows = 0
    for t in sorted(shard_dir.glob("*.tar")):
        d = pq.read_table(decisions_path(str(out), t.stem)).to_pylist()
        a = ann.read_rows(str(random_ann / f"{t.stem}.parquet"))
        assert [r["key"] for r in d] == [r["key"] for r in a]  # one row per annotation row, in order
        meta = read_meta(decisions_path(str(out), t.stem))
        assert (meta["version"], meta["shard"], meta["input"], meta["size"]) == (1, t.stem, str(t), t.stat().st_size)
        assert meta["strategy"] == cfg.strategy and meta["threshold"] == s["threshold"] and meta["mtime"]
        for r in d:
            n_rows += 1
            if not r["kept"]:
                assert drops[(r["key"], t.stem)] == r["reason"] and r["caption"] is None
                continue
            sample = got[r["key"]]
            assert sample.members["txt"].decode() == r["caption"]
            rc = sample.meta["recaption"]
            assert rc["caption_source"] == r["caption_source"] and rc["synthetic_caption"] == r["synthetic_caption"]
            for k in ("clip_raw", "clip_synthetic", "sieve", "blend"):
                assert rc[k] == r[k] and (r[k] is None or math.isfinite(r[k]))  # NaN is null
            if cfg.strategy == "both":
                assert ("syn.txt" in sample.members) == (r["synthetic_caption"] is not None)
    assert n_rows == len(got) + len(drops) == s["counts"]["read"]
    # the same command again: every shard is finished, nothing is redone, nothing changes
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    api.mix(str(shard_dir), str(random_ann), str(out), cfg, execution=QUIET)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before


def test_the_writer_decides_nothing(shard_dir, tmp_path):
    """Annotations changed after the plan do not reach the output: the decisions files do."""
    a = annotate_randomly(shard_dir, tmp_path / "ann", seed=3)
    out = tmp_path / "out"
    out.mkdir()
    cfg = MixConfig("synthetic", samples_per_shard=5)
    pool = pool_pass(sorted(str(p) for p in shard_dir.glob("*.tar")), str(a), cfg)
    plans, _ = plan(pool, cfg, str(out))
    for f in a.iterdir():  # another captioner's candidates, after the plan
        rows = ann.read_rows(str(f))
        ann.write(str(f), [r | {"captions": [c.upper() for c in r["captions"]]} for r in rows])
    for p in plans:
        assert MixWriteStage()(plan_dict(p)).status == "done"
    for sample in read_output(out).values():
        assert sample.members["txt"].decode().startswith("cap ")  # lower case: from the plan


@pytest.mark.slow
def test_mix_output_extracts_with_gnu_tar(shard_dir, random_ann, tmp_path):
    if not shutil.which("tar"):
        pytest.skip("no GNU tar")
    out = tmp_path / "out"
    api.mix(str(shard_dir), str(random_ann), str(out), MixConfig("both", samples_per_shard=5), execution=QUIET)
    got = read_output(out)
    tars, extracted = sorted(out.glob("*.tar")), 0
    for t in tars:
        dest = tmp_path / t.stem
        dest.mkdir()
        subprocess.run(["tar", "-xf", str(t), "-C", str(dest)], check=True)
        for p in dest.iterdir():
            extracted += 1
            key, field = p.name.split(".", 1)
            assert got[key].members[field] == p.read_bytes()
            if field == "json":
                json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in json"))
    # the loops ran: every member of every sample written was extracted and compared
    assert tars and extracted == sum(len(s.members) for s in got.values())


def test_mix_without_annotation_files_creates_nothing(shard_dir, tmp_path, capsys):
    out = tmp_path / "never"
    (tmp_path / "empty").mkdir()
    for folder, said in ((tmp_path / "empty", "no annotation files"),
                         (tmp_path / "gone", "annotation folder not found")):
        for args in (["-o", out], ["--dry-run"]):
            code = cli("mix", shard_dir, "-a", folder, "--strategy", "raw", *args)
            err = capsys.readouterr().err
            assert code != 0 and said in err
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "gone").exists() and not any((tmp_path / "empty").iterdir())


def test_dry_run_writes_nothing_and_counts_as_the_mix(shard_dir, random_ann, tmp_path):
    cfg = MixConfig("threshold", fraction=0.3, filter_synthetic=True, samples_per_shard=4)
    before = sorted(p.name for p in random_ann.iterdir())
    dry = api.mix(str(shard_dir), str(random_ann), str(tmp_path / "o"), cfg, dry_run=True)
    assert not (tmp_path / "o").exists() and sorted(p.name for p in random_ann.iterdir()) == before
    real = api.mix(str(shard_dir), str(random_ann), str(tmp_path / "o"), cfg, execution=QUIET)
    assert dry["counts"] == real["counts"] and dry["threshold"] == real["threshold"]


@pytest.mark.slow
def test_ray_engine_writes_the_same_files(shard_dir, random_ann, tmp_path, ray_local):
    """Pool pass, decisions and writes as Ray tasks: the same bytes as the local engine."""
    from tests.helpers import tree_bytes

    cfg = MixConfig("sieve", fraction=0.5, samples_per_shard=4)
    api.mix(str(shard_dir), str(random_ann), str(tmp_path / "local"), cfg, execution=QUIET)
    api.mix(str(shard_dir), str(random_ann), str(tmp_path / "ray"), cfg, execution=Execution(engine="ray", quiet=True))
    assert tree_bytes(tmp_path / "local") == tree_bytes(tmp_path / "ray")
    decided = sorted((tmp_path / "local" / "_decisions").iterdir())
    assert len(decided) == len(list(shard_dir.glob("*.tar")))  # one decisions file a shard, each compared
    for d in decided:
        assert pq.read_table(d).equals(pq.read_table(tmp_path / "ray" / "_decisions" / d.name))


@pytest.mark.parametrize("text,want", [
    (b'{"url": "u", "n": 1}', b'{"url": "u", "n": 1, "recaption": {"a": 1}}'),
    (b'{"url":"u"}\n', b'{"url":"u", "recaption": {"a": 1}}'),  # the original text is kept as it is
    (b"{ }", b'{"recaption": {"a": 1}}'),
    (None, b'{"recaption": {"a": 1}}'),
    (b'{"x": NaN, "y": [Infinity]}', b'{"x": null, "y": [null], "recaption": {"a": 1}}'),
    (b'{"recaption": 5, "z": 2}', b'{"recaption": {"a": 1}, "z": 2}'),  # replaced, in its place
])
def test_recaption_field_is_added_to_the_json(text, want):
    from recaption.output.members import with_recaption

    meta, out = with_recaption(text, {"a": 1})
    assert out == want
    json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in json"))


def test_a_file_whose_recorded_scores_do_not_pair_stops_the_mix(shard_dir, tmp_path):
    """A dry run counts candidates from clip_captions where the file records its clip group; a file
    that records it wrongly is refused by the mix (one line), never mixed differently."""
    a = annotate_randomly(shard_dir, tmp_path / "ann", seed=5)
    groups = {"captions": {"model": "m"}, "clip": {"model": "c"}}
    for f in sorted(a.iterdir()):
        rows = ann.read_rows(str(f))
        for r in rows:  # as scoring leaves them, except one row of the middle shard
            r["clip_captions"] = [0.3] * len(r["captions"])
        if f.stem == "00001":
            rows[2]["captions"] = rows[2]["captions"] + ["extra"]
        ann.write(str(f), rows, groups)
    code = cli("mix", shard_dir, "-a", a, "-o", tmp_path / "out", "--strategy", "synthetic", "-q")
    assert code == 2
