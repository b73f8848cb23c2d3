"""Issue 32 through the command line: a hostile sample costs only itself, a shard cut between two
members is named in the summary and the exit status, and the read limits are options."""
import json
import shutil
import tarfile
from pathlib import Path

import recaption
from recaption.demo.samples import write_tar
from recaption.io import annotations as ann
from tests.helpers import cli

SHARDS = Path(recaption.__file__).parent / "data" / "sample-shards"


def _folder(tmp_path) -> Path:
    d = tmp_path / "shards"
    d.mkdir()
    shutil.copy(SHARDS / "00001.tar", d / "00001.tar")
    data = (SHARDS / "00000.tar").read_bytes()
    with tarfile.open(SHARDS / "00000.tar") as t:
        firsts = [m.offset for m in t.getmembers() if m.name.endswith(".jpg")]
    (d / "00000.tar").write_bytes(data[: firsts[8]])  # cut exactly before the ninth sample
    with tarfile.open(SHARDS / "00002.tar") as t:
        jpg = next(t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".jpg"))
    write_tar(d / "00002.tar", [
        ("a", {"jpg": jpg, "txt": b"first", "json": b'{"k": 1}'}),
        ("big", {"jpg": jpg, "txt": b"x", "json": b'{"n": ' + b"7" * 5001 + b"}"}),
        ("deep", {"jpg": jpg, "txt": b"x", "json": b"[" * 200_000 + b"]" * 200_000}),
        ("nest", {"jpg": jpg, "txt": b"x", "json": b'{"a": ' * 30 + b"1" + b"}" * 30}),
        ("z", {"jpg": jpg, "txt": b"last", "json": b'{"k": 2}'}),
    ])
    return d


def test_score_keeps_what_it_read_names_the_cut_shard_and_exits_1(tmp_path, capsys):
    d = _folder(tmp_path)
    code = cli("score", d, "-a", tmp_path / "a", "--no-clip", "--no-sieve", "--max-json-depth", 20, "-q", "--json")
    s = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [f["shard"] for f in s["failed_shards"]] == ["00000"]
    assert "truncated tar" in s["failed_shards"][0]["error"]
    rows = {r["key"]: r for r in ann.read_rows(str(tmp_path / "a" / "00000.parquet"))}
    assert sum(r["status"] == "ok" for k, r in rows.items() if k) == 7
    assert "may be cut off" in rows["000000007"]["error"]
    rows = {r["key"]: r for r in ann.read_rows(str(tmp_path / "a" / "00002.parquet"))}
    assert [k for k, r in rows.items() if r["status"] == "ok"] == ["a", "z"]  # read on past the hostile ones
    assert "--max-json-int-digits" in rows["big"]["error"] and "200000 levels" in rows["deep"]["error"]
    assert "30 levels deep, over the limit of 20" in rows["nest"]["error"]  # the option, not the default


def test_read_limit_options_are_refused_out_of_range(tmp_path, capsys):
    d = _folder(tmp_path)
    assert cli("score", d, "-a", tmp_path / "a", "--no-clip", "--no-sieve", "--max-json-depth", 100_000, "-q") == 2
    assert "--max-json-depth is at most 500" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
