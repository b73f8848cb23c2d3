"""A re-run after anything changed rewrites exactly the output shards whose inputs changed, a shard
that is not the one annotated is refused before anything is written, and `recaption verify` says
whether a folder still agrees with its record and its inputs (issue 31, cases 1, 2 and 4)."""
from __future__ import annotations

import io
import json
import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import accounted, annotate_randomly, cli, repeat_a_kept_row, summary

MIX = ("--strategy", "threshold", "--fraction", "0.5", "--samples-per-shard", "5")


@pytest.fixture(scope="module")
def scored(shard_dir, tiny_models, tmp_path_factory):
    """(shards, raw-only annotation files) made by `score`, which records each shard's identity."""
    root = tmp_path_factory.mktemp("scored")
    shards = copy(shard_dir, root / "shards")
    assert cli("score", shards, "-a", root / "ann", "--clip-model", tiny_models["clip"]) == 0
    return shards, root / "ann"


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def stats_of(out) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))}


def test_a_mix_rerun_after_the_missing_shard_is_annotated_rewrites_what_changed(shard_dir, tmp_path, capsys):
    ann = annotate_randomly(shard_dir, tmp_path / "ann")
    held = (ann / "00001.parquet").read_bytes()
    (ann / "00001.parquet").unlink()
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, *MIX) == 1  # 00001 has no annotation file
    assert cli("verify", out) == 0
    first = stats_of(out)
    (ann / "00001.parquet").write_bytes(held)
    assert cli("mix", shard_dir, "-a", ann, "-o", out, *MIX) == 0
    written, _ = accounted(out, shard_dir)  # every input sample once: in a tar or dropped
    s = summary(out)
    assert s["written"] == len(written) == sum(v["count"] for v in stats_of(out).values())
    assert s["output_shards_rewritten"] >= 1
    again = stats_of(out)
    unchanged = [n for n in first if n in again and first[n]["built_from"] == again[n]["built_from"]]
    assert s["output_shards_rewritten"] == len(set(first) & set(again)) - len(unchanged)
    assert cli("verify", out) == 0
    capsys.readouterr()


def test_new_scores_rewrite_and_fewer_kept_samples_remove_the_extra_shards(shard_dir, tmp_path):
    ann = annotate_randomly(shard_dir, tmp_path / "ann", seed=1)
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, *MIX) == 0
    before = sorted(p.name for p in out.glob("*.tar"))
    # the same files, scored anew (as `score --overwrite` leaves them): other values, same keys
    for f in sorted(ann.glob("*.parquet")):
        t = pq.read_table(f)
        i = t.column_names.index("clip_raw")
        n = t.num_rows
        t = t.set_column(i, "clip_raw", pa.array([None if k % 2 else 0.1 * k for k in range(n)], pa.float32()))
        pq.write_table(t, f)
    assert cli("mix", shard_dir, "-a", ann, "-o", out, *MIX) == 0
    written, drops = accounted(out, shard_dir)
    assert not written & set(drops)
    after = sorted(p.name for p in out.glob("*.tar"))
    assert len(after) <= len(before) and summary(out)["output_shards_removed"] == len(before) - len(after)
    assert cli("verify", out) == 0


def test_a_rerun_with_nothing_changed_rewrites_nothing(shard_dir, tmp_path):
    ann = annotate_randomly(shard_dir, tmp_path / "ann", seed=2)
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, *MIX) == 0
    tars = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert cli("mix", shard_dir, "-a", ann, "-o", out, *MIX) == 0
    assert summary(out)["output_shards_rewritten"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == tars


def rewrite_images(shard):
    """The shard written anew with the same keys: each image gains a byte (a new size or mtime)."""
    with tarfile.open(shard) as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src.getmembers()]
    with tarfile.open(shard, "w") as out:
        for m, data in members:
            if data is not None and m.name.endswith((".jpg", ".png", ".webp")):
                data += b"\0" * 600
                m.size = len(data)
            out.addfile(m, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("overlay", [False, True])
def test_a_shard_changed_after_annotation_is_refused_before_anything_is_written(scored, tmp_path, capsys, overlay):
    shards, ann = scored
    shards, ann = copy(shards, tmp_path / "shards"), copy(ann, tmp_path / "ann")  # copies keep size and mtime
    out = tmp_path / "out"
    assert cli("mix", shards, "-a", ann, "-o", out, *MIX, *(["--overlay"] if overlay else [])) == 0
    assert cli("verify", out) == 0
    rewrite_images(shards / "00001.tar")
    capsys.readouterr()
    assert cli("verify", out) == 1
    assert "00001.tar changed since the mix" in capsys.readouterr().out
    again = tmp_path / "again"
    assert cli("mix", shards, "-a", ann, "-o", again, *MIX, *(["--overlay"] if overlay else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "00001.tar is not the shard" in err[0] and "00001.parquet" in err[0]
    assert "first differing sample '" in err[0]
    assert not again.exists()


def test_annotations_of_other_shards_with_the_same_names_are_refused(scored, shard_dir, tmp_path, capsys):
    from recaption.demo.samples import make_shards

    other = tmp_path / "other"
    make_shards(other, n_shards=3, per_shard=6, seed=9)
    _, ann = scored
    capsys.readouterr()
    assert cli("mix", other, "-a", ann, "-o", tmp_path / "out", *MIX, "--overlay") == 2
    assert "is not the shard" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_verify_names_an_output_that_no_longer_agrees(shard_dir, tmp_path, capsys):
    ann = annotate_randomly(shard_dir, tmp_path / "ann", seed=3)
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, *MIX) == 0
    capsys.readouterr()
    tar = sorted(out.glob("*.tar"))[0]
    tar.write_bytes(b"")
    assert cli("verify", out) == 1
    assert f"{tar.name} is missing or unreadable" in capsys.readouterr().out
    # annotations re-scored since the mix: the columns it read differ
    f = ann / "00000.parquet"
    t = pq.read_table(f)
    t = t.set_column(t.column_names.index("clip_raw"), "clip_raw", pa.array([0.5] * t.num_rows, pa.float32()))
    pq.write_table(t, f)
    assert cli("verify", out) == 1
    assert "changed since the mix (the columns it read)" in capsys.readouterr().out


def test_a_key_with_two_annotation_rows_fails_its_output_shard_only(shard_dir, tmp_path, capsys):
    ann = annotate_randomly(shard_dir, tmp_path / "ann", seed=4)
    key = repeat_a_kept_row(ann / "00002.parquet")
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "--keep-sharding") == 1
    failed = summary(out)["failed_output_shards"]
    assert [r["shard"] for r in failed] == ["00002"]
    assert "is kept in more than one annotation row" in failed[0]["error"]
    assert repr(key) in failed[0]["error"]
    assert (out / "00000.tar").exists() and (out / "00001.tar").exists() and not (out / "00002.tar").exists()


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_sample_without_an_annotation_row_is_dropped_with_that_reason(scored, tmp_path, where):
    shards, ann = scored
    shards, ann = copy(shards, tmp_path / "shards"), copy(ann, tmp_path / "ann")
    f = ann / "00001.parquet"
    t = pq.read_table(f)
    keyed = [i for i, k in enumerate(t["key"].to_pylist()) if k is not None]
    gone = {"first": keyed[0], "middle": keyed[len(keyed) // 2], "last": keyed[-1]}[where]
    key = t["key"][gone].as_py()
    pq.write_table(t.take([i for i in range(t.num_rows) if i != gone]), f)  # the footer (groups) stays
    out = tmp_path / "out"
    assert cli("mix", shards, "-a", ann, "-o", out, "--strategy", "raw") == 0  # then verify holds (cli)
    written, drops = accounted(out, shards)  # every input sample once, the unlisted one included
    assert drops[key] == "no annotation row" and key not in written
    s = summary(out)
    assert s["counts"]["dropped_by_reason"]["no annotation row"] == 1
    assert s["counts"]["read"] == len(written) + len(drops)


def test_a_killed_runs_temporary_decisions_file_is_cleared_by_the_rerun(shard_dir, tmp_path):
    import os

    ann = annotate_randomly(shard_dir, tmp_path / "ann", seed=5)
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, *MIX) == 0
    dead = next(p for p in range(4_000_000, 3_000_000, -1) if not os.path.exists(f"/proc/{p}"))  # no such process
    left = out / "_decisions" / f".00001.parquet.recaption-{dead}-0123abcd.tmp"
    theirs = out / "_decisions" / ".notes.tmp"  # not recaption's: stays
    left.write_bytes(b"half a file")
    theirs.write_bytes(b"mine")
    assert cli("mix", shard_dir, "-a", ann, "-o", out, *MIX) == 0
    assert not left.exists() and theirs.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_threshold_that_is_not_a_number_is_refused_before_anything(shard_dir, tmp_path, capsys, value):
    ann = annotate_randomly(shard_dir, tmp_path / "ann", seed=6)
    capsys.readouterr()
    assert cli("mix", shard_dir, "-a", ann, "-o", tmp_path / "out", "--strategy", "threshold",
               "--threshold", value) == 2
    assert "--threshold must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
