"""`recaption verify` says a folder holds only where every file agrees with its record and its
inputs, and names what does not: decisions edited after the mix (an overlay's included, which
readers then refuse), every count and setting of the summary, the drops file by key and reason,
and each output tar to its end-of-archive blocks, member by member; a missing file is named."""
from __future__ import annotations

import io
import json
import shutil
import tarfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recaption.errors import RecaptionError
from tests.helpers import (annotate_randomly, cli, photo_shards, read_output, repeat_a_kept_row, rerecord_decisions,
                           summary)

MIX = ("--strategy", "both", "--fraction", "0.5", "--samples-per-shard", "5")


@pytest.fixture(scope="module")
def folders(shard_dir, tmp_path_factory):
    """A mix and an overlay of the same annotations, made once; tests edit copies."""
    root = tmp_path_factory.mktemp("verify")
    ann = annotate_randomly(shard_dir, root / "ann", seed=11)
    assert cli("mix", shard_dir, "-a", ann, "-o", root / "mix", *MIX) == 0  # verify holds (cli)
    assert cli("mix", shard_dir, "-a", ann, "-o", root / "overlay", *MIX, "--overlay") == 0
    return {"mix": root / "mix", "overlay": root / "overlay", "ann": ann, "shards": shard_dir}


@pytest.fixture
def copy(folders, tmp_path):
    """`copy(kind)`: a copy of the mix or overlay folder to edit."""
    def make(kind):
        dst = tmp_path / kind
        shutil.copytree(folders[kind], dst)
        return dst
    return make


def problems(folder, capsys) -> str:
    """What `recaption verify` prints for `folder`, checked to exit 1."""
    capsys.readouterr()
    assert cli("verify", folder) == 1
    return capsys.readouterr().out


def edit_decisions(path, column, value_of):
    """Rewrite one column of a decisions file, its metadata kept (as a hand edit would)."""
    t = pq.read_table(path)
    i = t.column_names.index(column)
    t = t.set_column(i, column, pa.array([value_of(v) for v in t[column].to_pylist()], t.schema.field(column).type))
    pq.write_table(t, path)


EDITS = {  # column -> a value changed as an attacker would (kept rows only where it matters)
    "caption": lambda v: None if v is None else v + " (edited)",
    "caption_source": lambda v: {"raw": "synthetic", "synthetic": "raw"}.get(v, v),
    "reason": lambda v: None if v is None else "mix: edited",
    "clip_raw": lambda v: None if v is None else v + 0.5,
}


@pytest.mark.parametrize("column", list(EDITS))
@pytest.mark.parametrize("kind", ["overlay", "mix"])
def test_an_edited_decisions_file_fails_verify(copy, capsys, kind, column):
    folder = copy(kind)
    path = folder / "_decisions" / "00001.parquet"
    edit_decisions(path, column, EDITS[column])
    out = problems(folder, capsys)
    assert f"{path} is not the decisions file the mix wrote" in out


@pytest.mark.parametrize("column", list(EDITS))
def test_an_overlay_reader_refuses_an_edited_decisions_file_in_one_line(folders, copy, column):
    from recaption.overlay.reader import OverlayReader
    from recaption.io.shards import iter_shard

    folder = copy("overlay")
    path = folder / "_decisions" / "00001.parquet"
    edit_decisions(path, column, EDITS[column])
    reader = OverlayReader(str(folder))
    url = str(folders["shards"] / "00001.tar")
    first = next(iter_shard(url))
    with pytest.raises(RecaptionError) as e:
        reader.apply({"__url__": url, "__key__": first.key, **first.members})
    assert str(path) in str(e.value) and "sha256" in str(e.value) and "\n" not in str(e.value)
    other = str(folders["shards"] / "00000.tar")  # an unedited shard still reads
    s = next(iter_shard(other))
    reader.apply({"__url__": other, "__key__": s.key, **s.members})


def test_a_reader_refuses_a_summary_without_decisions_digests(copy):
    from recaption.overlay.reader import OverlayReader

    folder = copy("overlay")
    s = summary(folder)
    del s["decisions"]
    (folder / "_summary.json").write_text(json.dumps(s))
    with pytest.raises(RecaptionError, match="records no digests of its decisions files"):
        OverlayReader(str(folder))


def test_an_overlay_with_a_key_kept_in_two_rows_fails_that_shard_as_a_mix_does(shard_dir, tmp_path, capsys):
    from recaption.overlay.reader import OverlayReader
    from recaption.io.shards import iter_shard

    ann = annotate_randomly(shard_dir, tmp_path / "ann", seed=4)
    key = repeat_a_kept_row(ann / "00002.parquet")
    out, full = tmp_path / "ov", tmp_path / "full"
    assert cli("mix", shard_dir, "-a", ann, "-o", full, "--strategy", "raw", "--keep-sharding") == 1
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "--overlay") == 1
    s = summary(out)
    bad = [e for e in s["shard_errors"] if e["shard"] == "00002"]
    assert len(bad) == 1 and "is kept in more than one annotation row" in bad[0]["error"]
    assert repr(key) in bad[0]["error"]
    reader = OverlayReader(str(out))
    yielded = 0
    for url in sorted(shard_dir.glob("*.tar")):
        for smp in iter_shard(str(url)):
            sample = {"__url__": str(url), "__key__": smp.key, **smp.members}
            if url.name == "00002.tar":
                with pytest.raises(RecaptionError, match="is kept in more than one annotation row"):
                    reader.apply(sample)
                break
            yielded += reader.apply(sample) is not None
    assert s["written"] == yielded == summary(full)["written"]  # the summary says what readers get
    assert "a reader of the overlay refuses this shard" in problems(out, capsys)


COUNTS = ("read", "written", "raw", "synthetic", "dropped", "errors")


@pytest.mark.parametrize("kind", ["mix", "overlay"])
def test_every_count_of_the_summary_is_checked(copy, capsys, kind):
    folder = copy(kind)
    original = (folder / "_summary.json").read_text()
    counts = summary(folder)["counts"]
    assert set(COUNTS) <= set(counts)
    for k, v in counts.items():
        if not isinstance(v, int):
            continue
        s = json.loads(original)
        s["counts"][k] = v + 1
        (folder / "_summary.json").write_text(json.dumps(s))
        assert f"counts {v + 1} " in problems(folder, capsys), k
    s = json.loads(original)
    reason = next(iter(s["counts"]["dropped_by_reason"]))
    s["counts"]["dropped_by_reason"][reason] += 1
    (folder / "_summary.json").write_text(json.dumps(s))
    assert "dropped_by_reason" in problems(folder, capsys)
    moved = json.loads(original)  # the same total, moved between two reasons
    by = moved["counts"]["dropped_by_reason"]
    a, b = list(by)[:2]
    by[a], by[b] = by[a] + 1, by[b] - 1
    (folder / "_summary.json").write_text(json.dumps(moved))
    assert f"dropped for {a!r}" in problems(folder, capsys)


@pytest.mark.parametrize("setting", ["strategy", "threshold", "alpha", "caption_keys"])
def test_the_summary_settings_are_checked_against_the_decisions(copy, capsys, setting):
    folder = copy("mix")
    s = summary(folder)
    s[setting] = {"strategy": "raw", "threshold": (s["threshold"] or 0) + 0.01, "alpha": 0.9,
                  "caption_keys": "all"}[setting]
    (folder / "_summary.json").write_text(json.dumps(s))
    assert f"was made with {setting} " in problems(folder, capsys)


def test_the_decisions_metadata_is_checked_against_the_summary(copy, capsys):
    folder = copy("overlay")
    path = folder / "_decisions" / "00000.parquet"
    t = pq.read_table(path)
    meta = json.loads(t.schema.metadata[b"recaption.decisions"])
    meta["threshold"] += 0.01
    pq.write_table(t.replace_schema_metadata({b"recaption.decisions": json.dumps(meta).encode()}), path)
    rerecord_decisions(folder)
    assert f"{path} was made with threshold " in problems(folder, capsys)


def test_decisions_whose_filter_rules_are_unknown_here_are_named_and_the_counts_go_on(copy, capsys):
    """A rule no registry here knows (a plugin's, not loaded) cannot say which category its reasons
    fall in: one line naming the file and the rule, not a crash, and the other counts still checked."""
    folder = copy("overlay")
    path = folder / "_decisions" / "00000.parquet"
    t = pq.read_table(path)
    meta = json.loads(t.schema.metadata[b"recaption.decisions"])
    meta["filters"] = {"no-such-rule": 1}
    pq.write_table(t.replace_schema_metadata({b"recaption.decisions": json.dumps(meta).encode()}), path)
    rerecord_decisions(folder)
    said = problems(folder, capsys)
    assert f"{path}: its filter rules' drops cannot be put in categories" in said and "no-such-rule" in said
    assert f"{path} was made with filters" in said  # the settings check's line
    assert "counts" not in said  # the file's rows, errors and every other reason were counted


def test_the_drops_file_is_matched_by_key_and_reason(copy, capsys):
    folder = copy("mix")
    path = folder / "_dropped.parquet"
    t = pq.read_table(path)
    reasons = t["reason"].to_pylist()
    edited = t.set_column(2, "reason", pa.array(["mix: edited"] + reasons[1:], pa.string()))
    pq.write_table(edited, path)  # the same count per shard
    out = problems(folder, capsys)
    first = t.slice(0, 1).to_pylist()[0]
    assert f"_dropped.parquet, shard {first['shard']}: lacks 1" in out and repr(first["key"]) in out
    keys = t["key"].to_pylist()
    other = t.set_column(0, "key", pa.array(keys[1:] + keys[:1], pa.string()))  # keys rotated: same reasons' count
    pq.write_table(other, path)
    assert "_dropped.parquet, shard" in problems(folder, capsys)
    pq.write_table(t.slice(1), path)  # a drop left out
    assert f"_dropped.parquet, shard {first['shard']}: lacks 1" in problems(folder, capsys)


def rewrite_tar(path, change):
    """The tar written anew with `change(name, data)` -> data (None leaves the member out)."""
    with tarfile.open(path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers() if m.isfile()]
    with tarfile.open(path, "w") as out:
        for m, data in members:
            data = change(m.name, data)
            if data is None:
                continue
            m.size = len(data)
            out.addfile(m, io.BytesIO(data))


def first_kept(folder):
    tar = sorted(folder.glob("*.tar"))[0]
    with tarfile.open(tar) as t:
        return tar, t.getmembers()[0].name.split(".", 1)[0]


@pytest.mark.parametrize("member", ["txt", "json", "syn.txt"])
def test_an_output_sample_whose_member_disagrees_with_its_decisions_fails_verify(copy, capsys, member):
    folder = copy("mix")
    written = read_output(folder)
    key = next(k for k, s in written.items() if member in s.members)
    tar = next(p for p in sorted(folder.glob("*.tar")) if key in {s for s in _keys(p)})
    # a letter changed in what the mix wrote: the caption, or the recaption object (its strategy)
    rewrite_tar(tar, lambda name, data: data.replace(b'"strategy": "both"', b'"strategy": "bath"').replace(
        b"a", b"b", 1 if member != "json" else 0) if name == f"{key}.{member}" else data)
    out = problems(folder, capsys)
    assert f"{tar.name}: sample {key!r} has a" in out


def _keys(tar):
    with tarfile.open(tar) as t:
        return {m.name.split(".", 1)[0] for m in t.getmembers()}


def test_an_output_samples_caption_keys_are_checked(folders, tmp_path, capsys):
    out = tmp_path / "keys"
    assert cli("mix", folders["shards"], "-a", folders["ann"], "-o", out, *MIX, "--caption-keys", "all") == 0
    key = next(k for k, s in read_output(out).items() if b'"recaption_raw": "' in s.members["json"])
    tar = next(p for p in sorted(out.glob("*.tar")) if key in _keys(p))
    rewrite_tar(tar, lambda name, data: data.replace(b'"recaption_raw": "', b'"recaption_raw": "x')
                if name == f"{key}.json" else data)
    assert f"sample {key!r} has a json whose caption keys" in problems(out, capsys)


@pytest.mark.parametrize("member", ["txt", "json"])
def test_an_output_sample_without_its_new_member_fails_verify(copy, capsys, member):
    folder = copy("mix")
    tar, key = first_kept(folder)
    rewrite_tar(tar, lambda name, data: None if name == f"{key}.{member}" else data)
    assert f"{tar.name}: sample {key!r} lacks its .{member}" in problems(folder, capsys)


def test_an_output_sample_without_the_strategys_extra_member_fails_verify(copy, capsys):
    folder = copy("mix")
    written = read_output(folder)
    key = next(k for k, s in written.items() if "syn.txt" in s.members)  # both: syn.txt where a synthetic caption is
    tar = next(p for p in sorted(folder.glob("*.tar")) if key in _keys(p))
    rewrite_tar(tar, lambda name, data: None if name == f"{key}.syn.txt" else data)
    assert f"{tar.name}: sample {key!r} has members [] where its decisions give ['syn.txt']" in problems(folder, capsys)


def test_an_output_tar_without_its_end_of_archive_blocks_fails_verify(copy, capsys):
    folder = copy("mix")
    tar = sorted(folder.glob("*.tar"))[0]
    data = tar.read_bytes().rstrip(b"\0")
    tar.write_bytes(data + b"\0" * (-len(data) % 512))  # whole members, no end blocks
    assert f"{tar.name} is not whole (" in problems(folder, capsys)


def test_the_per_shard_parquet_captions_are_checked(copy, capsys):
    folder = copy("mix")
    p = sorted(folder.glob("0*.parquet"))[0]
    t = pq.read_table(p)
    i = t.column_names.index("caption")
    pq.write_table(t.set_column(i, "caption", pc.binary_join_element_wise(t["caption"], "!", "")), p)
    assert f"{p.name}'s caption column is not its decisions'" in problems(folder, capsys)


@pytest.mark.parametrize("suffix", ["_stats.json", ".parquet", ".tar"])
def test_a_missing_output_file_is_named(copy, capsys, suffix):
    folder = copy("mix")
    (folder / f"00000{suffix}").unlink()
    assert f"output shard 00000: 00000{suffix} is missing" in problems(folder, capsys)


def test_a_missing_decisions_file_is_named(copy, capsys):
    folder = copy("mix")
    (folder / "_decisions" / "00001.parquet").unlink()
    out = problems(folder, capsys)
    assert "_decisions/00001.parquet is missing" in out


@pytest.mark.parametrize("text, says", [("{not json", "is not valid JSON"), ("[]", "holds a list, not a stats object")])
def test_a_corrupt_stats_file_is_named_alone(copy, capsys, text, says):
    """Its tar is whole: that its samples are "in no output shard" and "the tars hold 0" would send
    the reader after the wrong file."""
    folder = copy("mix")
    (folder / "00000_stats.json").write_text(text)
    out = problems(folder, capsys)
    assert f"{folder / '00000_stats.json'} {says}" in out and "00000 cannot be read" in out, out
    assert "in no output shard" not in out and "the tars hold" not in out, out


def test_a_corrupt_summary_is_named(copy, capsys):
    folder = copy("overlay")
    (folder / "_summary.json").write_text("{not json")
    assert f"{folder / '_summary.json'} is not valid JSON" in problems(folder, capsys)


def test_input_on_a_mix_folder_is_refused_in_one_line(folders, capsys):
    capsys.readouterr()
    assert cli("verify", folders["mix"], "--input", folders["shards"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--input is only for annotation folders" in err[0]


def test_a_folder_that_does_not_exist_is_one_line(tmp_path, capsys):
    capsys.readouterr()
    assert cli("verify", tmp_path / "nonexistent") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"recaption: error: {tmp_path / 'nonexistent'}: no such folder"]


def test_each_drop_category_is_checked_on_its_own_duplicates_included(tmp_path, capsys):
    """`dropped_by_reason` is compared category by category with what the decisions' reasons fall
    in, duplicate rules included (they were once checked only as a total): two categories whose
    counts are swapped keep the total and still fail verify, each named."""
    from recaption.dedup.duplicates import RULE_NAMES, category

    shards = photo_shards(tmp_path / "in")
    assert cli("caption", shards, "-o", tmp_path / "ann", "-c", "none", "-q") == 0  # fingerprints, no model
    out = tmp_path / "mix"
    assert cli("mix", shards, "-a", tmp_path / "ann", "-o", out, "--strategy", "raw", "--dedup", "exact",
               "--dedup", "phash", "-q") == 0  # and verify holds
    original = (out / "_summary.json").read_text()
    by = json.loads(original)["counts"]["dropped_by_reason"]
    dups = [c for c in (category(code) for code in RULE_NAMES) if c in by]
    others = [c for c in by if c not in dups]
    assert len(dups) >= 2 and others, by
    pairs = [(a, b) for a in dups for b in dups + others if a != b and by[a] != by[b]]
    assert any(b in dups for _, b in pairs) and any(b in others for _, b in pairs)
    for a, b in [next(p for p in pairs if p[1] in dups), next(p for p in pairs if p[1] in others)]:
        s = json.loads(original)
        s["counts"]["dropped_by_reason"][a], s["counts"]["dropped_by_reason"][b] = by[b], by[a]
        (out / "_summary.json").write_text(json.dumps(s))
        said = problems(out, capsys)
        assert f"dropped for {a!r}" in said and f"dropped for {b!r}" in said, said
    (out / "_summary.json").write_text(original)
    capsys.readouterr()
    assert cli("verify", out) == 0


def test_an_annotation_folder_is_checked_against_every_input_shard_given(shard_dir, tmp_path, capsys):
    """With --input, every shard given has its annotation file (one without was said to hold,
    though a mix of those shards fails) and each is the shard annotated."""
    shards = shutil.copytree(shard_dir, tmp_path / "shards", copy_function=shutil.copy2)
    ann = tmp_path / "ann"
    assert cli("score", shards, "-a", ann, "--no-clip", "--no-sieve", "-q") == 0
    assert cli("verify", ann, "--input", shards) == 0
    extra = shards / "00009.tar"
    shutil.copy2(shards / "00000.tar", extra)  # an input shard never annotated
    capsys.readouterr()
    assert cli("verify", ann, "--input", shards) == 1
    assert f"{extra}: no annotation file in {ann}" in capsys.readouterr().out
    extra.unlink()
    with open(shards / "00001.tar", "ab") as f:  # a shard changed since it was annotated
        f.write(b"\0" * 512)
    capsys.readouterr()
    assert cli("verify", ann, "--input", shards) == 1
    assert "00001.tar changed since it was annotated" in capsys.readouterr().out
