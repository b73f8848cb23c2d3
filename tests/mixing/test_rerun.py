"""A mix re-run leaves a folder that agrees with its record and its inputs: a shard rewritten with
other captions or json is refused, what no longer is planned goes (decisions, output shards), a
shard that fails this time leaves no output of an earlier run, output follows the input's order,
and a restored shard is counted."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest

from recaption.errors import RecaptionError
from recaption.io import tarindex
from recaption.io.shards import iter_shard
from tests.helpers import cli, summary

RAW = ("--strategy", "raw", "--keep-sharding")


@pytest.fixture(scope="module")
def measured(shard_dir, tmp_path_factory):
    """(shards, annotation files) made by `score` with no model: metrics and fingerprints, the
    shard's identity, member index and txt and json digests recorded."""
    root = tmp_path_factory.mktemp("measured")
    shards = shutil.copytree(shard_dir, root / "shards")
    assert cli("score", shards, "-a", root / "ann", "--no-clip", "--no-sieve", "-q") == 0
    return shards, root / "ann"


@pytest.fixture()
def copies(measured, tmp_path):
    """Copies of the shards and annotation files this test may change (copies keep size and mtime)."""
    shards, ann = measured
    return (shutil.copytree(shards, tmp_path / "shards", copy_function=shutil.copy2),
            shutil.copytree(ann, tmp_path / "ann"))


def rewrite(shard, field: str, change) -> str:
    """The shard written anew, its first sample's `field` member replaced by `change(bytes)`; its key."""
    with tarfile.open(shard) as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src.getmembers()]
    first = members[0][0].name.split(".", 1)[0]
    with tarfile.open(shard, "w") as out:
        for m, data in members:
            if data is not None and m.name == f"{first}.{field}":
                data = change(data)
                m.size = len(data)
            out.addfile(m, io.BytesIO(data) if data is not None else None)
    return first


def touch(path) -> None:
    """A later mtime, the bytes unchanged (a copy, a restore from backup)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))


@pytest.mark.parametrize("field", ["txt", "json"])
def test_a_shard_rewritten_with_another_txt_or_json_is_refused(copies, tmp_path, capsys, field):
    shards, ann = copies
    change = ((lambda b: b + b" (edited)") if field == "txt" else
              (lambda b: json.dumps({**json.loads(b), "x": 1}).encode()))
    key = rewrite(shards / "00001.tar", field, change)
    capsys.readouterr()
    assert cli("mix", shards, "-a", ann, "-o", tmp_path / "out", *RAW) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "00001.tar is not the shard" in err[0], err
    assert f"first differing sample {key!r} (its {field})" in err[0]
    assert not (tmp_path / "out").exists()


def test_an_unchanged_copy_is_proven_by_its_content_and_used(copies, tmp_path):
    shards, ann = copies
    touch(shards / "00001.tar")
    assert cli("mix", shards, "-a", ann, "-o", tmp_path / "out", *RAW) == 0


def test_an_older_annotation_without_digests_refuses_a_changed_shard(copies, tmp_path, capsys):
    from recaption.mixing.provenance import NO_DIGESTS

    shards, ann = copies
    f = ann / "00001.parquet"
    t = pq.read_table(f)
    pq.write_table(t.drop_columns(list(tarindex.DIGEST_NAMES)), f)  # as files written before them (footer kept)
    touch(shards / "00001.tar")  # the same bytes: nothing but the digests could prove it
    capsys.readouterr()
    assert cli("mix", shards, "-a", ann, "-o", tmp_path / "out", *RAW) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "00001.tar is not the shard" in err[0] and NO_DIGESTS in err[0], err
    touch(shards / "00000.tar")  # a file that has them is still proven
    assert cli("mix", shards / "00000.tar", "-a", ann, "-o", tmp_path / "out0", *RAW) == 0


def test_decisions_and_shards_of_a_shard_no_longer_planned_are_removed(copies, tmp_path):
    shards, ann = copies
    out = tmp_path / "out"
    assert cli("mix", shards, "-a", ann, "-o", out, *RAW) == 0
    assert (out / "_decisions" / "00001.parquet").exists() and (out / "00001.tar").exists()
    (ann / "00001.parquet").unlink()
    assert cli("mix", shards, "-a", ann, "-o", out, *RAW) == 1  # 00001 has no annotation file
    assert sorted(p.name for p in (out / "_decisions").iterdir()) == ["00000.parquet", "00002.parquet"]
    assert not any((out / f"00001{s}").exists() for s in (".tar", ".parquet", "_stats.json"))
    rec = json.loads((out / "_recaption.json").read_text())
    assert not [n for n in rec["written"] if "00001" in n]  # the record lists what is there
    s = summary(out)
    assert s["decisions_removed"] == ["00001"] and s["output_shards_removed"] == 1


def test_the_overlay_reader_serves_no_decisions_file_the_summary_does_not_record(copies, tmp_path):
    from recaption.overlay.reader import OverlayReader

    shards, ann = copies
    out = tmp_path / "overlay"
    assert cli("mix", shards, "-a", ann, "-o", out, "--strategy", "raw", "--overlay") == 0
    held = (out / "_decisions" / "00001.parquet").read_bytes()
    (ann / "00001.parquet").unlink()
    assert cli("mix", shards, "-a", ann, "-o", out, "--strategy", "raw", "--overlay") == 1
    assert not (out / "_decisions" / "00001.parquet").exists()
    (out / "_decisions" / "00001.parquet").write_bytes(held)  # a file no run of this folder lists now
    sample = next(s for s in iter_shard(str(shards / "00001.tar")))
    reader = OverlayReader(str(out))
    with pytest.raises(RecaptionError, match="_summary.json records no decisions file for shard '00001'"):
        reader.apply({"__url__": str(shards / "00001.tar"), "__key__": sample.key, **sample.members})
    first = next(s for s in iter_shard(str(shards / "00000.tar")))  # a listed shard is still served
    reader.apply({"__url__": str(shards / "00000.tar"), "__key__": first.key, **first.members})


def test_an_output_shard_that_fails_on_a_rerun_leaves_no_earlier_output(copies, tmp_path, capsys):
    import pyarrow as pa

    shards, ann = copies
    out = tmp_path / "out"
    assert cli("mix", shards, "-a", ann, "-o", out, *RAW) == 0
    f = ann / "00002.parquet"
    t = pq.read_table(f)
    i = next(i for i, r in enumerate(t.to_pylist()) if r["status"] == "ok" and r["raw_caption"])
    pq.write_table(pa.concat_tables([t, t.slice(i, 1)]), f)  # a key kept twice: its output shard fails
    capsys.readouterr()
    assert cli("mix", shards, "-a", ann, "-o", out, *RAW) == 1
    assert [r["shard"] for r in summary(out)["failed_output_shards"]] == ["00002"]
    assert not any((out / f"00002{s}").exists() for s in (".tar", ".parquet", "_stats.json"))
    assert (out / "00000.tar").exists() and (out / "00001.tar").exists()


def test_output_follows_the_input_order_when_annotation_rows_are_reordered(copies, tmp_path):
    shards, ann = copies
    f = ann / "00001.parquet"
    t = pq.read_table(f)
    pq.write_table(t.take(list(range(t.num_rows))[::-1]), f)  # the footer (groups, identity) stays
    out = tmp_path / "out"
    assert cli("mix", shards, "-a", ann, "-o", out, *RAW) == 0  # then verify holds (cli)
    written = [s.key for s in iter_shard(str(out / "00001.tar"))]
    order = [s.key for s in iter_shard(str(shards / "00001.tar")) if s.key in set(written)]
    assert len(written) > 1 and written == order


def test_a_shard_restored_after_its_stats_were_removed_is_counted(copies, tmp_path):
    shards, ann = copies
    out = tmp_path / "out"
    assert cli("mix", shards, "-a", ann, "-o", out, *RAW) == 0
    (out / "00001_stats.json").unlink()
    assert cli("mix", shards, "-a", ann, "-o", out, *RAW) == 0
    assert (out / "00001_stats.json").exists()
    assert summary(out)["output_shards_rewritten"] == 1
