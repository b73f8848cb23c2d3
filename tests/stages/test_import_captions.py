import pyarrow as pa
import pyarrow.parquet as pq

from recaption.io import annotations as ann
from tests.helpers import input_samples
from tests.helpers import cli


def test_import_by_key_csv_then_score_and_mix(shard_dir, tmp_path, tiny_models, minilm):
    inputs = input_samples(shard_dir)
    keys = list(inputs)
    csv = tmp_path / "caps.csv"
    lines = ["key,caption"] + [f"{k},a drawn shape number {i}" for i, k in enumerate(keys[:10])]
    lines += [f"{keys[0]},a second candidate"]  # repeated key: another candidate
    csv.write_text("\n".join(lines) + "\n")
    a = tmp_path / "ann"
    assert cli("import-captions", shard_dir, "--captions", csv, "-o", a, "--captioner", "blip2-released", "-q") == 0
    rows = {r["key"]: r for f in sorted(a.glob("*.parquet")) for r in ann.read_rows(str(f))}
    assert list(rows) == keys
    assert rows[keys[0]]["captions"] == ["a drawn shape number 0", "a second candidate"]
    assert rows[keys[12]]["captions"] == [] and rows[keys[12]]["captioner"] == "blip2-released"
    assert cli("score", shard_dir, "-a", a, "--clip-model", tiny_models["clip"], "--sieve-model", minilm, "-q") == 0
    rows = {r["key"]: r for f in sorted(a.glob("*.parquet")) for r in ann.read_rows(str(f))}
    assert len(rows[keys[0]]["clip_captions"]) == 2
    assert cli("mix", shard_dir, "-a", a, "-o", tmp_path / "out", "--strategy", "synthetic", "-q") == 0


def test_import_by_datacomp_uid_from_parquet_list_column(shard_dir, tmp_path):
    inputs = input_samples(shard_dir)
    uids = {s.meta["uid"]: k for k, s in inputs.items()}
    first = next(iter(uids))
    pq.write_table(pa.table({"uid": [first], "texts": [["one", "two"]]}), tmp_path / "c.parquet")
    a = tmp_path / "ann"
    assert cli("import-captions", shard_dir, "--captions", tmp_path / "c.parquet", "-o", a, "--key-column", "uid",
               "--caption-column", "texts", "-q") == 0
    rows = {r["key"]: r for f in sorted(a.glob("*.parquet")) for r in ann.read_rows(str(f))}
    assert rows[uids[first]]["captions"] == ["one", "two"]
    assert sum(bool(r["captions"]) for r in rows.values()) == 1


def test_import_names_a_missing_column(shard_dir, tmp_path, capsys):
    (tmp_path / "c.csv").write_text("id,text\n1,x\n")
    assert cli("import-captions", shard_dir, "--captions", tmp_path / "c.csv", "-o", tmp_path / "a", "-q") != 0
