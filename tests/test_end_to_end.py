"""annotate -> mix through the CLI on real shards with tiny models and the real MiniLM."""
import json

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from recaption.io import annotations as ann
from tests.helpers import cli, dropped, input_samples, read_output, summary


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, shard_dir, tiny_models, minilm):
    out = tmp_path_factory.mktemp("ann")
    code = cli("annotate", shard_dir, "-o", out, "-c", "sieve", "--model", tiny_models["blip"],
               "--num-captions", 3, "--seed", 3, "--clip-model", tiny_models["clip"], "--sieve-model", minilm,
               "--batch-size", 4, "-q")
    assert code == 0
    return out


def test_annotate_writes_complete_spec2_files(annotated, shard_dir, tiny_models):
    files = sorted(p.name for p in annotated.glob("*.parquet"))
    assert files == ["00000.parquet", "00001.parquet", "00002.parquet"]
    assert sorted(p.name for p in annotated.iterdir()) == files + ["_recaption.json"]
    inputs = input_samples(shard_dir)
    rows = [r for f in files for r in ann.read_rows(str(annotated / f))]
    assert [r["key"] for r in rows] == list(inputs)  # input order, one row per sample
    for r in rows:
        assert r["status"] == "ok" and r["captioner"] == tiny_models["blip"]
        assert len(r["captions"]) == 3 and len(r["clip_captions"]) == 3
        assert r["raw_caption"] == inputs[r["key"]].raw_caption
        if r["raw_caption"] is None:  # no alt-text: nothing to score it against
            assert r["clip_raw"] is None and r["sieve"] is None
        else:
            assert r["clip_raw"] is not None and -1 <= r["clip_raw"] <= 1
            assert r["sieve"] is not None and r["sieve_best"] in r["captions"]
    assert sum(r["raw_caption"] is None for r in rows) < len(rows) / 2


def test_second_annotate_does_nothing(annotated, shard_dir, tiny_models, minilm, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in annotated.iterdir()}
    code = cli("annotate", shard_dir, "-o", annotated, "-c", "sieve", "--model", tiny_models["blip"],
               "--num-captions", 3, "--seed", 3, "--clip-model", tiny_models["clip"], "--sieve-model", minilm,
               "--batch-size", 4, "-q", "--json")
    assert code == 0
    assert {p.name: p.stat().st_mtime_ns for p in annotated.iterdir()} == before
    assert json.loads(capsys.readouterr().out)["shards"]["skipped"] == 3


def test_score_fills_a_caption_only_annotation(tmp_path, shard_dir, tiny_models, minilm):
    a = tmp_path / "a"
    assert cli("caption", shard_dir / "00000.tar", "-o", a, "-c", tiny_models["coca"], "--max-new-tokens", 4, "-q") == 0
    r = ann.read_rows(str(a / "00000.parquet"))[0]
    assert r["sieve"] is None and r["clip_raw"] is None and len(r["captions"]) == 1
    assert cli("score", shard_dir / "00000.tar", "-a", a, "--clip-model", tiny_models["clip"],
               "--sieve-model", minilm, "-q") == 0
    rows = ann.read_rows(str(a / "00000.parquet"))
    assert all(r["clip_raw"] is not None and r["sieve"] is not None for r in rows if r["raw_caption"])
    assert all(len(r["clip_captions"]) == 1 for r in rows)
    assert [r["captions"] for r in rows][0] == r["captions"]


@pytest.mark.parametrize("strategy,extra", [
    ("raw", ["--fraction", "0.5"]),
    ("synthetic", []),
    ("threshold", ["--fraction", "0.3", "--filter-synthetic"]),
    ("both", []),
    ("sieve", ["--fraction", "0.4"]),
])
def test_mix_accounts_for_every_sample(annotated, shard_dir, tmp_path, strategy, extra):
    out = tmp_path / "out"
    code = cli("mix", shard_dir, "-a", annotated, "-o", out, "--strategy", strategy, "--samples-per-shard", 5,
               *extra, "-q")
    assert code == 0
    inputs = input_samples(shard_dir)
    got, drops = read_output(out), dropped(out)
    assert set(got) | {k for k, _ in drops} == set(inputs)
    assert not set(got) & {k for k, _ in drops}
    rows = {r["key"]: r for f in sorted(annotated.glob("*.parquet")) for r in ann.read_rows(str(f))}
    for k, s in got.items():
        src = inputs[k]
        assert s.members[src.image_field] == src.image_bytes  # never re-encoded
        rc = s.meta["recaption"]
        assert rc["strategy"] == strategy and rc["raw_caption"] == src.raw_caption
        meta_wo = {x: y for x, y in s.meta.items() if x != "recaption"}
        assert meta_wo == src.meta
        txt = s.members["txt"].decode()
        assert txt == (src.raw_caption if rc["caption_source"] == "raw" else rc["synthetic_caption"])
        assert rc["synthetic_caption"] in rows[k]["captions"]
        if strategy == "both":
            assert s.members["syn.txt"].decode() == rc["synthetic_caption"]
    sm = summary(out)
    assert sm["counts"]["read"] == len(inputs) == sm["counts"]["written"] + sm["counts"]["dropped"]
    assert sm["counts"]["written"] == len(got)
    stats = [json.loads(p.read_text())["count"] for p in sorted(out.glob("*_stats.json"))]
    assert sum(stats) == len(got) and all(n <= 5 for n in stats)
    for p in sorted(out.glob("0*.parquet")):
        assert pq.read_table(p).num_rows == json.loads((out / (p.stem + "_stats.json")).read_text())["count"]
    upstream = [x["__key__"] for t in sorted(out.glob("*.tar")) for x in wds.WebDataset(str(t), shardshuffle=False)]
    assert sorted(upstream) == sorted(got)
    if strategy == "threshold":
        t = sm["threshold"]
        vals = sorted((r["clip_raw"] for r in rows.values() if r["clip_raw"] is not None), reverse=True)
        assert t == vals[int(len(vals) * 0.3)]


@pytest.mark.slow
def test_mix_output_reads_with_ray_data(annotated, shard_dir, tmp_path, ray_local):
    import ray.data

    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", annotated, "-o", out, "--strategy", "synthetic", "-q") == 0
    # Raw bytes, no tensor casting: Ray cannot cast a column that only some samples have (png vs jpg).
    ray.data.DataContext.get_current().enable_tensor_extension_casting = False
    rows = ray.data.read_webdataset(str(out), file_extensions=["tar"], decoder=False).take_all()
    got = read_output(out)
    assert sorted(r["__key__"] for r in rows) == sorted(got)
    for r in rows:
        assert r["txt"] == got[r["__key__"]].members["txt"].decode()


def test_dry_run_writes_nothing(annotated, shard_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli("mix", shard_dir, "-a", annotated, "-o", out, "--strategy", "threshold", "--fraction", "0.3",
               "--dry-run") == 0
    assert not out.exists()
    text = capsys.readouterr().out
    assert "dry run" in text and "would write" in text


def test_keep_sharding(annotated, shard_dir, tmp_path):
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", annotated, "-o", out, "--strategy", "raw", "--keep-sharding", "-q") == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]


def test_output_folder_of_another_run_is_refused(annotated, shard_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", annotated, "-o", out, "--strategy", "raw", "-q") == 0
    assert cli("mix", shard_dir, "-a", annotated, "-o", out, "--strategy", "synthetic", "-q") == 2
    err = capsys.readouterr().err
    assert "another run" in err and "--overwrite" in err and "Traceback" not in err
    assert cli("mix", shard_dir, "-a", annotated, "-o", out, "--strategy", "synthetic", "--overwrite", "-q") == 0
    assert summary(out)["strategy"] == "synthetic"
    # the same command again resumes: nothing to redo, same result
    assert cli("mix", shard_dir, "-a", annotated, "-o", out, "--strategy", "synthetic", "-q") == 0
    assert summary(out)["written"] == summary(out)["counts"]["written"]


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_fraction_edges(annotated, shard_dir, fraction):
    from recaption import api
    from recaption.mixing.strategies import MixConfig

    s = api.mix(str(shard_dir), str(annotated), None, MixConfig("raw", fraction=fraction), dry_run=True)
    scored = [r["clip_raw"] for f in sorted(annotated.glob("*.parquet")) for r in ann.read_rows(str(f))
              if r["clip_raw"] is not None]
    if fraction == 1.0:
        assert s["counts"]["written"] == len(scored) and s["threshold"] == min(scored)
    else:  # DataComp's rule: n = 0, the threshold is the maximum; only its ties are kept
        assert s["threshold"] == max(scored) and s["counts"]["written"] == scored.count(max(scored))
