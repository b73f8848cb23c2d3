"""`mix --overlay`: the decisions, drops and summary of a mix and no shards, in a folder of its own
kind; and the pieces readers use to find and check a shard."""
import json

import pyarrow.parquet as pq
import pytest

from recaption.errors import RecaptionError
from recaption.overlay.reader import reader_shard_name, stat_target
from tests.helpers import summary
from tests.helpers import annotate_randomly
from tests.helpers import cli

MIX = ["--strategy", "threshold", "--fraction", "0.3", "--filter-synthetic", "-q"]


@pytest.fixture(scope="module")
def rand_ann(shard_dir, tmp_path_factory):
    return annotate_randomly(shard_dir, tmp_path_factory.mktemp("ov-ann") / "ann", seed=7)


def test_overlay_holds_the_full_mixs_decisions_and_no_shards(shard_dir, rand_ann, tmp_path):
    ov, full = tmp_path / "ov", tmp_path / "full"
    assert cli("mix", shard_dir, "-a", rand_ann, "-o", ov, *MIX, "--overlay") == 0
    assert cli("mix", shard_dir, "-a", rand_ann, "-o", full, *MIX) == 0
    assert sorted(p.name for p in ov.iterdir()) == ["_decisions", "_dropped.parquet", "_recaption.json",
                                                     "_summary.json"]
    assert sorted(p.name for p in (ov / "_decisions").iterdir()) == ["00000.parquet", "00001.parquet",
                                                                      "00002.parquet"]
    for d in sorted((full / "_decisions").iterdir()):
        a, b = pq.read_table(ov / "_decisions" / d.name), pq.read_table(d)
        assert a.equals(b) and a.schema.metadata == b.schema.metadata  # the same decisions, the same record
    assert pq.read_table(ov / "_dropped.parquet").equals(pq.read_table(full / "_dropped.parquet"))
    so, sf = summary(ov), summary(full)
    assert so["overlay"] is True and sf["overlay"] is False and so["dry_run"] is False
    assert so["counts"] == {**sf["counts"], "output_shards": None}
    assert so["threshold"] == sf["threshold"]
    assert so["written"] == sf["written"]  # what a reader yields is what the tars hold
    assert so["decisions"] == sf["decisions"] and list(so["decisions"]) == ["00000", "00001", "00002"]
    assert json.loads((ov / "_recaption.json").read_text())["kind"] == "overlay"


def test_overlay_and_shards_never_pass_for_each_other(shard_dir, rand_ann, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", rand_ann, "-o", out, *MIX, "--overlay") == 0
    # the same command resumes; how output shards would be cut is no part of an overlay
    assert cli("mix", shard_dir, "-a", rand_ann, "-o", out, *MIX, "--overlay", "--samples-per-shard", 3) == 0
    capsys.readouterr()
    assert cli("mix", shard_dir, "-a", rand_ann, "-o", out, *MIX) == 2  # same settings, but shards
    err = capsys.readouterr().err
    assert "a mix overlay" in err and "--overwrite" in err and not list(out.glob("*.tar"))
    assert cli("mix", shard_dir, "-a", rand_ann, "-o", out, *MIX, "--overwrite") == 0
    assert list(out.glob("*.tar")) and summary(out)["overlay"] is False
    assert cli("mix", shard_dir, "-a", rand_ann, "-o", out, *MIX, "--overlay") == 2
    assert "mixed shards" in capsys.readouterr().err
    assert cli("mix", shard_dir, "-a", rand_ann, "-o", out, *MIX, "--overlay", "--overwrite") == 0
    assert not list(out.glob("*.tar")) and not list(out.glob("*_stats.json")) and summary(out)["overlay"] is True
    assert sorted(p.name for p in out.iterdir()) == ["_decisions", "_dropped.parquet", "_recaption.json",
                                                      "_summary.json"]


def test_overlay_and_dry_run_exclude_each_other(shard_dir, rand_ann, tmp_path, capsys):
    assert cli("mix", shard_dir, "-a", rand_ann, "-o", tmp_path / "o", *MIX, "--overlay", "--dry-run") == 2
    assert "choose one" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("url,name", [
    ("/data/shards/00012.tar", "00012"), ("s3://b/x/00012.tar.gz", "00012"),
    ("https://h/x/00012.tar?sig=1", "00012"), ("pipe:aws s3 cp s3://b/x/00012.tar -", "00012"),
    ("pipe:curl -s -L 'https://h/a/00003.tgz'", "00003"), ("pipe:cat /d/a.tar /d/b.tar", "b"),
])
def test_the_shard_a_reader_url_names(url, name):
    assert reader_shard_name(url) == name


def test_a_pipe_without_a_shard_is_an_error():
    with pytest.raises(RecaptionError, match="cannot tell which shard"):
        reader_shard_name("pipe:cat -")


def test_where_a_shard_is_checked():
    assert stat_target("/d/00001.tar", "/d/00001.tar") == "/d/00001.tar"
    assert stat_target("bucket/x/00001.tar", "s3://bucket/x/00001.tar") == "s3://bucket/x/00001.tar"  # Ray's path
    assert stat_target("pipe:aws s3 cp s3://b/00001.tar -", "s3://b/00001.tar") == "s3://b/00001.tar"
    assert stat_target("/copy/00001.tar", "s3://b/00001.tar") == "/copy/00001.tar"  # read from: what is checked


@pytest.mark.parametrize("text", [
    b'{"url": "u", "n": 1}', b'{"url":"u"}\n', b"{ }", b"  {}  ", b'{"x": NaN}', b'{"s": "NaN"}',
    b'{"recaption": 5, "z": 2}', b'{"\\u0072ecaption": 1}', b'{"\\u0052ecaption": 1}', b'{"s": "caf\\u00e9"}',
    b'{"a": {"recaption": 1}}', b'{"s": "recaption"}', b'{"a": [1, {"b": "}"}]}',
])
def test_splicing_without_a_parse_is_what_the_writer_writes(text):
    from recaption.output.members import splice_recaption, with_recaption

    rc = {"raw_caption": "r", "strategy": "raw"}
    added = json.dumps(rc, ensure_ascii=False).encode()
    fast = splice_recaption(text, added)
    assert fast is None or fast == with_recaption(text, rc, added)[1]
    if b"recaption" not in text and b"NaN" not in text and b"\\u00" not in text:
        assert fast is not None  # the common case takes the fast path
