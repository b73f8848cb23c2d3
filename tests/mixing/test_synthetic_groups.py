"""`mix --synthetic-group fused,short`: a fused group fuses only the rows its `where` rule sends, so
a mix takes, per row, the synthetic caption (its candidates, captioner, CLIP and SIEVE scores) from
the first listed group with a candidate there; a row with none has no synthetic caption. One group
records what it always did. The pool: real shards, random annotations, a `short` group on most
rows and a `fused` group on every third (`tests.helpers.add_caption_group`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from recaption.annotators import groups
from recaption.io import annotations as ann
from tests.helpers import add_caption_group, annotate_randomly, cli, fraction_threshold, read_output, summary

LISTED = ("fused", "short")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from recaption.demo.samples import make_shards

    root = tmp_path_factory.mktemp("fallback")
    shards = root / "shards"
    shards.mkdir()
    make_shards(shards, n_shards=2, per_shard=24, seed=5)
    a = annotate_randomly(shards, root / "ann", seed=3)
    add_caption_group(a, "short", lambda i: 0 if i % 7 == 0 else 1 + i % 2, seed=1)  # a few rows with none
    add_caption_group(a, "fused", lambda i: 1 if i % 3 == 0 else 0, seed=2)  # the rows "sent" to the text model
    return shards, a


def _rows(ann_dir: Path) -> dict:
    return {r["key"]: r for p in sorted(ann_dir.glob("*.parquet")) for r in ann.read_rows(str(p))
            if r["key"] is not None}


def _chosen(r: dict) -> str | None:
    """The group a row's synthetic caption comes from, by the rule: the first listed with a candidate."""
    return next((g for g in LISTED if r[f"captions__{g}"]), None)


def _best_score(r: dict, g: str | None):
    if g is None:
        return None
    caps, scores = r[f"captions__{g}"], r[f"clip_captions__{g}"]
    return max(scores) if len(scores) == len(caps) else None


def _decisions(out: Path) -> dict:
    return {r["key"]: r for p in sorted((out / "_decisions").glob("*.parquet")) for r in pq.read_table(p).to_pylist()
            if r["key"] is not None}


def _mix(pool, out, *args):
    shards, a = pool
    return cli("mix", shards, "-a", a, "-o", out, *args, "-q")


def test_each_row_takes_the_first_listed_group_with_a_candidate(pool, tmp_path):
    shards, a = pool
    rows = _rows(a)
    assert {_chosen(r) for r in rows.values()} == {"fused", "short", None}  # the pool has every case
    out = tmp_path / "mixed"
    assert _mix(pool, out, "--strategy", "synthetic", "--fraction", "0.5", "--synthetic-group", "fused,short",
                "--caption-keys", "best") == 0  # and `recaption verify` holds (tests.helpers.cli)
    decided = _decisions(out)
    assert set(decided) == set(rows)
    for key, d in decided.items():
        r, g = rows[key], _chosen(rows[key])
        assert d["synthetic_group"] == g, key
        assert d["synthetic_caption"] == (groups.best(r, g) if g else None), key
        assert d["clip_synthetic"] == _best_score(r, g), key
        assert d["sieve"] == (r[f"sieve__{g}"] if g else r["sieve__fused"]), key
        assert d["captioner"] == (r[f"captioner__{g}"] if g else r["captioner__fused"]), key
    # the strategy cut on the chosen group's scores: the fraction is taken over them
    valid = [r for r in rows.values() if r["status"] == "ok"]
    want_t = fraction_threshold([_best_score(r, _chosen(r)) for r in valid], 0.5)
    s = summary(out)
    assert s["threshold"] == pytest.approx(want_t, abs=0)
    kept = {r["key"] for r in valid if _best_score(r, _chosen(r)) is not None and _best_score(r, _chosen(r)) >= want_t}
    written = read_output(out)
    assert set(written) == kept and {_chosen(rows[k]) for k in kept} == {"fused", "short"}
    for key, smp in written.items():
        r, g = rows[key], _chosen(rows[key])
        assert smp.members["txt"].decode() == groups.best(r, g) == smp.meta["recaption_synthetic"]
        assert smp.meta["recaption"]["captioner"] == f"tiny-{g}"
        assert smp.meta[f"recaption_group_{g}"] == groups.best(r, g)
        # a group's own key only where it has a candidate: short's best is not written as fused's
        assert ("recaption_group_fused" in smp.meta) == bool(r["captions__fused"])
    parquet = {r["key"]: r for p in out.glob("0*.parquet") for r in pq.read_table(p).to_pylist()}
    assert {k: r["synthetic_group"] for k, r in parquet.items()} == {k: _chosen(rows[k]) for k in kept}
    # the summary counts the rows by the group that gave their synthetic caption, as the dry run does
    want = {g: {"read": sum(_chosen(r) == g for r in rows.values()),
                "written": sum(_chosen(rows[k]) == g for k in kept),
                "synthetic": sum(_chosen(rows[k]) == g for k in kept)} for g in LISTED}
    assert s["counts"]["synthetic_groups"] == want
    meta = json.loads(pq.read_schema(next((out / "_decisions").glob("*.parquet"))).metadata[b"recaption.decisions"])
    assert meta["synthetic_group"] == list(LISTED)
    assert {"captions__fused", "captions__short", "sieve__fused", "sieve__short"} <= set(meta["annotation_columns"])
    from recaption import api

    d = api.mix(str(shards), str(a), None, strategy="synthetic", fraction=0.5, synthetic_group=list(LISTED),
                dry_run=True)
    assert d["counts"]["synthetic_groups"] == want and d["threshold"] == s["threshold"]


def test_the_blend_is_normalised_over_the_chosen_sieve_scores(pool, tmp_path):
    rows = _rows(pool[1])
    out = tmp_path / "sieve"
    assert _mix(pool, out, "--strategy", "sieve", "--fraction", "0.4", "--synthetic-group", "fused,short") == 0
    chosen = [r[f"sieve__{_chosen(r)}"] for r in rows.values() if r["status"] == "ok" and _chosen(r)]
    chosen = [v for v in chosen if v is not None]
    lo, hi = summary(out)["min_max"]["sieve"]
    assert (lo, hi) == (pytest.approx(min(chosen), abs=0), pytest.approx(max(chosen), abs=0))
    # neither group alone gives that range
    for g in LISTED:
        own = [r[f"sieve__{g}"] for r in rows.values() if r["status"] == "ok" and r[f"sieve__{g}"] is not None]
        assert (min(own), max(own)) != (min(chosen), max(chosen))


def test_an_overlay_reads_the_samples_the_mix_wrote(pool, tmp_path):
    from recaption.webdataset import overlay

    shards = pool[0]
    args = ["--strategy", "threshold", "--fraction", "0.3", "--synthetic-group", "fused,short", "--caption-keys",
            "all"]
    assert _mix(pool, tmp_path / "mixed", *args) == 0
    assert _mix(pool, tmp_path / "ov", *args, "--overlay") == 0
    written = read_output(tmp_path / "mixed")
    stage = overlay(str(tmp_path / "ov"))
    read = list(wds.WebDataset(sorted(map(str, shards.glob("*.tar"))), shardshuffle=False).compose(stage))
    assert [s["__key__"] for s in read] == list(written)
    for s in read:
        w = written[s["__key__"]]
        assert s["txt"] == w.members["txt"] and s["json"] == w.members["json"]
    assert summary(tmp_path / "ov")["counts"]["synthetic_groups"] == summary(tmp_path / "mixed")["counts"][
        "synthetic_groups"]


def test_another_list_is_refused_and_redone_with_overwrite(pool, tmp_path, capsys):
    out = tmp_path / "mixed"
    assert _mix(pool, out, "--strategy", "synthetic", "--synthetic-group", "fused,short") == 0
    capsys.readouterr()
    before = (out / "_recaption.json").read_text()
    assert _mix(pool, out, "--strategy", "synthetic", "--synthetic-group", "short,fused") != 0
    assert "synthetic_group" in capsys.readouterr().err
    assert (out / "_recaption.json").read_text() == before
    assert _mix(pool, out, "--strategy", "synthetic", "--synthetic-group", "short,fused", "--overwrite") == 0
    rows = _rows(pool[1])
    for key, d in _decisions(out).items():  # short first now: fused only where short has none
        want = next((g for g in ("short", "fused") if rows[key][f"captions__{g}"]), None)
        assert d["synthetic_group"] == want
    assert json.loads((out / "_recaption.json").read_text())["identity"]["mix"]["synthetic_group"] == ["short",
                                                                                                      "fused"]


def test_one_group_records_what_it_always_did(pool, tmp_path):
    """A list of one is that group: the same record, decisions and parquet as `--synthetic-group
    short`, with no per-row group column and no per-group counts; the CLI resumes the API's folder."""
    from recaption import api

    shards, a = pool
    out = tmp_path / "one"
    api.mix(str(shards), str(a), str(out), strategy="synthetic", fraction=0.5, synthetic_group=["short"])
    rec = json.loads((out / "_recaption.json").read_text())
    assert rec["identity"]["mix"]["synthetic_group"] == "short"
    assert "synthetic_groups" not in summary(out)["counts"]
    assert all("synthetic_group" not in pq.read_schema(p).names for p in out.rglob("*.parquet"))
    meta = json.loads(pq.read_schema(next((out / "_decisions").glob("*.parquet"))).metadata[b"recaption.decisions"])
    assert meta["synthetic_group"] == "short"
    stats = {p.name: json.loads(p.read_text())["built_from"] for p in out.glob("*_stats.json")}
    assert _mix(pool, out, "--strategy", "synthetic", "--fraction", "0.5", "--synthetic-group", "short") == 0
    assert summary(out)["output_shards_rewritten"] == 0
    assert {p.name: json.loads(p.read_text())["built_from"] for p in out.glob("*_stats.json")} == stats


@pytest.mark.parametrize("given, said", [
    ("fused,medium", "has no caption group 'medium'"),  # a file lacking a listed group, named with those it holds
    ("fused,short,fused", "group 'fused' is listed twice"),
    ("fused,Short", "caption group name 'Short'"),
    ("fused,", "caption group name ''"),
])
def test_a_bad_list_is_one_line_naming_the_group(pool, tmp_path, capsys, given, said):
    assert _mix(pool, tmp_path / "m", "--strategy", "synthetic", "--synthetic-group", given) != 0
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m" / "_summary.json").exists()


@pytest.mark.parametrize("keep", ["best:sieve", "best:sieve_mean"])
def test_duplicates_ranked_by_a_score_the_group_has_its_own_of_are_refused(pool, tmp_path, capsys, keep):
    """The file's `sieve` is the unnamed group's: ranking by it beside a mix of the group's own SIEVE
    would keep the duplicate another caption scored best, silently."""
    for listed in ("fused", "fused,short"):
        assert _mix(pool, tmp_path / "m", "--strategy", "synthetic", "--synthetic-group", listed,
                    "--dedup", "exact", "--dedup-keep", keep) == 2
        err = capsys.readouterr().err.strip()
        assert keep in err and "best:clip_raw" in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "m").exists()


def test_a_recipe_lists_the_groups_and_needs_each(tmp_path):
    from recaption.recipes import load_recipe, missing_groups, recipe_parts

    p = tmp_path / "r.yaml"
    p.write_text("captioner: null\nclip: {model: ViT-B-32}\nsieve: {model: default}\n"
                 "mix: {strategy: synthetic, synthetic_group: [fused, short]}\n")
    parts = recipe_parts(load_recipe(str(p)))
    assert parts.mix.synthetic_group == ["fused", "short"]
    assert missing_groups(parts) == ["captions.fused", "captions.short"]


def test_verify_checks_the_group_counts_and_column(pool, tmp_path):
    from recaption.api import verify

    out = tmp_path / "mixed"
    assert _mix(pool, out, "--strategy", "synthetic", "--synthetic-group", "fused,short") == 0
    copy = tmp_path / "edited"
    shutil.copytree(out, copy)
    s = json.loads((copy / "_summary.json").read_text())
    s["counts"]["synthetic_groups"]["fused"]["read"] += 1
    (copy / "_summary.json").write_text(json.dumps(s))
    assert any("from synthetic group 'fused'" in p for p in verify(str(copy)))
    shutil.rmtree(copy)
    shutil.copytree(out, copy)
    shard = next(copy.glob("0*.parquet"))
    t = pq.read_table(shard)
    pq.write_table(t.drop_columns(["synthetic_group"]), shard)
    assert any("lacks the synthetic_group column" in p for p in verify(str(copy)))
    swapped = [{"fused": "short", "short": "fused"}.get(g) for g in t["synthetic_group"].to_pylist()]
    t = t.set_column(t.column_names.index("synthetic_group"), "synthetic_group", pa.array(swapped, pa.string()))
    pq.write_table(t, shard)
    assert any("synthetic_group column is not its decisions'" in p for p in verify(str(copy)))


def test_a_report_of_the_mix_reads_its_groups(pool, tmp_path):
    from recaption.report.data import load

    out = tmp_path / "mixed"
    assert _mix(pool, out, "--strategy", "synthetic", "--fraction", "0.5", "--synthetic-group", "fused,short") == 0
    d = load(str(out))
    assert d.cfg.synthetic_group == ["fused", "short"]
