"""Issue 12.1: no verb may write into, around or over its input; --overwrite removes only what
recaption recorded writing."""
import json
import shutil

import pytest

from recaption.io import folders
from tests.helpers import cli


@pytest.fixture()
def shards(tmp_path, shard_dir):
    d = tmp_path / "shards"
    shutil.copytree(shard_dir, d)
    return d


def _tree(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ann(tmp_path_factory, shard_dir, tiny_models):
    a = tmp_path_factory.mktemp("safety") / "ann"
    assert cli("score", shard_dir, "-a", a, "--clip-model", tiny_models["clip"], "--no-sieve", "-q") == 0
    return a


@pytest.mark.parametrize("argv", [
    ["mix", "{s}", "-a", "{a}", "-o", "{s}", "--strategy", "raw", "--overwrite"],
    ["mix", "{s}", "-a", "{a}", "-o", "{s}/mixed", "--strategy", "raw", "--overwrite"],
    ["mix", "{s}/00000.tar", "-a", "{a}", "-o", "{tmp}", "--strategy", "raw", "--overwrite"],
    ["run", "datacomp-clip", "{s}", "-o", "{s}", "--overwrite", "--set", "clip.model={clip}"],
    ["annotate", "{s}", "-o", "{s}", "--overwrite", "--no-sieve", "--clip-model", "{clip}", "-c", "{blip}"],
    ["caption", "{s}", "-o", "{s}/ann", "-c", "{blip}"],
    ["score", "{s}", "-a", "{s}", "--no-sieve", "--clip-model", "{clip}", "--overwrite"],
    ["import-captions", "{s}", "--captions", "{tmp}/c.csv", "-o", "{s}", "--overwrite"],
])
def test_an_output_overlapping_the_input_is_refused_and_the_input_stays(argv, shards, ann, tiny_models, tmp_path,
                                                                        capsys):
    (tmp_path / "c.csv").write_text("key,caption\nx,y\n")
    subs = {"{s}": str(shards), "{a}": str(ann), "{tmp}": str(tmp_path), "{clip}": tiny_models["clip"],
            "{blip}": tiny_models["blip"]}
    args = [next((a.replace(k, v) for k, v in subs.items() if k in a), a) for a in argv]
    before = _tree(tmp_path)
    assert cli(*args, "-q") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input shard folder" in err[0] and "Traceback" not in err[0], err
    assert _tree(tmp_path) == before  # nothing removed, nothing created


@pytest.mark.parametrize("out", ["{a}", "{a}/mixed"])
def test_mix_into_the_annotation_folder_is_refused(out, shard_dir, ann, capsys):
    before = _tree(ann)
    assert cli("mix", shard_dir, "-a", ann, "-o", out.replace("{a}", str(ann)), "--strategy", "raw",
               "--overwrite", "-q") == 2
    assert "annotation folder" in capsys.readouterr().err
    assert _tree(ann) == before


def test_overwrite_removes_only_what_recaption_wrote(shard_dir, ann, tmp_path):
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "--samples-per-shard", 2, "-q") == 0
    many = sorted(p.name for p in out.glob("*.tar"))
    assert len(many) > 2
    (out / "notes.txt").write_text("mine")
    (out / "extra.parquet").write_bytes(b"not recaption's")
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "--samples-per-shard", 100,
               "--overwrite", "-q") == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar"]  # the old shards are gone
    assert (out / "notes.txt").read_text() == "mine" and (out / "extra.parquet").read_bytes() == b"not recaption's"
    rec = json.loads((out / folders.RECORD).read_text())
    assert "00000.tar" in rec["written"] and "notes.txt" not in rec["written"]


def test_a_folder_recaption_did_not_write_is_never_overwritten(shard_dir, ann, tmp_path, capsys):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "00000.tar").write_bytes(b"someone else's shard")
    for extra in ([], ["--overwrite"]):
        assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", *extra, "-q") == 2
        assert "did not write" in capsys.readouterr().err
    assert (out / "00000.tar").read_bytes() == b"someone else's shard"
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar"]


def test_relations_are_path_aware(tmp_path):
    a, b = folders.normalize(tmp_path / "data"), folders.normalize(tmp_path / "data-2")
    assert folders.relation(a, b) is None  # a shared prefix is not containment
    assert folders.relation(folders.normalize(tmp_path / "data" / "x"), a) == "lies inside"
    assert folders.relation(a, folders.normalize(tmp_path / "data" / "x")) == "contains"
    assert folders.relation(folders.normalize(str(tmp_path / "data") + "/"), a) == "is"


@pytest.mark.parametrize("older", [False, True])
def test_overwrite_leaves_a_users_file_in_the_decisions_folder(shard_dir, ann, tmp_path, caplog, older):
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "-q") == 0
    if older:  # as records were before decisions files were listed one by one: the folder, whole
        rec = json.loads((out / folders.RECORD).read_text())
        rec["written"] = [n for n in rec["written"] if not n.startswith("_decisions/")] + ["_decisions"]
        (out / folders.RECORD).write_text(json.dumps(rec))
    (out / "_decisions" / "notes.txt").write_text("mine")
    (out / "_decisions" / "00009.parquet").write_bytes(b"a parquet of my own")
    caplog.clear()
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "threshold", "--fraction", "0.5",
               "--overwrite", "-q") == 0
    assert (out / "_decisions" / "notes.txt").read_text() == "mine"
    assert (out / "_decisions" / "00009.parquet").read_bytes() == b"a parquet of my own"
    left = json.loads((out / "_summary.json").read_text())["foreign_files_left"]
    assert sorted(left) == ["_decisions/00009.parquet", "_decisions/notes.txt"]
    assert any("left _decisions in place" in r.getMessage() and "notes.txt" in r.getMessage() for r in caplog.records)
    rec = json.loads((out / folders.RECORD).read_text())
    assert "_decisions" not in rec["written"] and "_decisions/notes.txt" not in rec["written"]
    assert sorted(p.name for p in (out / "_decisions").iterdir()) == [
        "00000.parquet", "00001.parquet", "00002.parquet", "00009.parquet", "notes.txt"]
    from recaption.mixing.verify import verify

    assert verify(str(out)) == []  # the user's parquet is not the mix's: verify leaves it out, as readers do
    (out / "_decisions" / "00002.parquet").unlink()
    assert any("00002.parquet is missing" in p for p in verify(str(out)))  # the mix's own are still checked


@pytest.mark.parametrize("name", ["_decisions/00001.parquet", "00001.tar"])
def test_a_users_file_where_a_rerun_would_write_is_refused_not_written_over(shard_dir, ann, tmp_path, capsys, name):
    """A file the record does not list is not recaption's, even in its folder: a re-run that would
    write that name (here: a shard more than the first run read) stops there, naming it."""
    out = tmp_path / "out"
    assert cli("mix", shard_dir / "00000.tar", "-a", ann, "-o", out, "--strategy", "raw", "--keep-sharding", "-q") == 0
    (out / name).write_bytes(b"mine")
    capsys.readouterr()
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "--keep-sharding", "--overwrite",
               "-q") == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("recaption: error:")]
    assert len(err) == 1 and f"{out / name} is not a file recaption wrote" in err[0], err
    assert (out / name).read_bytes() == b"mine"
    (out / name).unlink()  # moved away: the same command goes on
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "--keep-sharding", "--overwrite",
               "-q") == 0
    assert cli("verify", out) == 0


def test_a_record_naming_files_outside_the_folder_never_removes_them(shard_dir, ann, tmp_path):
    """A record is a file anyone may edit: a re-run prunes only names inside the folder that the
    record lists (it removed `_decisions/../../NAME.parquet`, and an output shard's every file
    where the record named its stats alone; and it swept the temporaries of a folder beside it)."""
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "-q") == 0
    for name in ("victim.parquet", "victim_stats.json", "victim.tar"):
        (tmp_path / name).write_text("precious")
    (out / "mine.tar").write_text("mine")
    rec = json.loads((out / folders.RECORD).read_text())
    from tests.helpers import dead_pid

    other = tmp_path / "other"  # another run's folder, with a temporary of its own
    other.mkdir()
    temp = other / f".x.parquet.recaption-{dead_pid()}-0123abcd.tmp"
    temp.write_text("theirs")
    rec["written"] += ["_decisions/../../victim.parquet", "../victim_stats.json", "mine_stats.json",
                       "../other/x.parquet"]
    (out / folders.RECORD).write_text(json.dumps(rec))
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "-q") == 0
    assert all((tmp_path / n).read_text() == "precious" for n in ("victim.parquet", "victim_stats.json", "victim.tar"))
    assert (out / "mine.tar").read_text() == "mine" and temp.read_text() == "theirs"
