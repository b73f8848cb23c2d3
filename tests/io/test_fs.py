"""Storage options reach every filesystem; a missing filesystem package is one line naming its extra."""
import sys

import fsspec
import pytest

from recaption.errors import MissingExtra, RecaptionError
from recaption.io import fs as rfs
from tests.helpers import cli


@pytest.fixture(autouse=True)
def _restore_options():
    before = rfs.get_options()
    yield
    rfs.set_options(before)


def test_options_from_json_text_json_file_and_yaml_file(tmp_path):
    assert rfs.parse_options('{"anon": true}') == {"anon": True}
    j = tmp_path / "o.json"
    j.write_text('{"s3": {"profile": "lab"}}')
    assert rfs.parse_options(str(j)) == {"s3": {"profile": "lab"}}
    y = tmp_path / "o.yaml"
    y.write_text("s3:\n  endpoint_url: http://127.0.0.1:9000\ngcs:\n  token: anon\n")
    assert rfs.parse_options(str(y)) == {"s3": {"endpoint_url": "http://127.0.0.1:9000"}, "gcs": {"token": "anon"}}
    with pytest.raises(RecaptionError, match="not valid JSON"):
        rfs.parse_options('{"anon": tru}')
    with pytest.raises(RecaptionError, match="neither JSON text nor a file"):
        rfs.parse_options(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecaptionError, match="must be a mapping"):
        rfs.parse_options(str(tmp_path / "list.yaml"))


def test_flat_options_go_to_every_remote_protocol_keyed_ones_to_theirs():
    rfs.set_options({"anon": True})
    assert rfs.options_for("memory") == {"anon": True}
    assert rfs.options_for("file") == {}  # local files take no storage options
    rfs.set_options({"memory": {"a": 1}, "http": {"b": 2}})
    assert rfs.options_for("memory") == {"a": 1}
    https = rfs.options_for("https")
    assert https.pop("client_kwargs")["middlewares"]  # recaption's retries and timeouts (below)
    assert https == {"b": 2}  # an alias gets its filesystem's entry
    assert rfs.options_for("file") == {}


def test_object_stores_never_answer_from_a_stale_listing():
    pytest.importorskip("s3fs")
    rfs.set_options({"s3": {"anon": True}})
    assert rfs.options_for("s3") == {"anon": True, "use_listings_cache": False}
    assert rfs.options_for("s3a")["use_listings_cache"] is False
    rfs.set_options({"use_listings_cache": True})
    assert rfs.options_for("s3")["use_listings_cache"] is True  # the user's choice stands


def test_options_apply_inside_a_block_and_are_restored():
    rfs.set_options({"x": 1})
    with rfs.using('{"y": 2}'):
        assert rfs.get_options() == {"y": 2}
        with rfs.using(None):  # nested API calls keep the options in force
            assert rfs.get_options() == {"y": 2}
    assert rfs.get_options() == {"x": 1}


def test_options_reach_the_filesystem(tmp_path):
    mem = fsspec.filesystem("memory")
    mem.pipe("/opts/a.txt", b"x")
    fs, path = rfs.fs_for("memory://opts/a.txt")
    rfs.set_options({"memory": {"skip_instance_cache": True}})
    fs2, _ = rfs.fs_for("memory://opts/a.txt")
    assert fs2 is not fs  # a different option set builds a different filesystem
    with rfs.open_url("memory://opts/a.txt") as f:
        assert f.read() == b"x"


def test_summary_argv_hides_inline_storage_options():
    argv = ["mix", "s3://b/s", "--storage-options", '{"key": "AKIA", "secret": "s"}', "-o", "s3://b/o"]
    assert rfs.hide_secrets(argv) == ["mix", "s3://b/s", "--storage-options", "<hidden>", "-o", "s3://b/o"]
    assert rfs.hide_secrets(["--storage-options", "creds.yaml"]) == ["--storage-options", "creds.yaml"]
    assert rfs.hide_secrets(['--storage-options={"token": "t"}']) == ["--storage-options=<hidden>"]


def _hide_package(monkeypatch, package: str):
    """As if `package` were not installed: its import fails and fsspec has not loaded it yet."""
    reg_mod = sys.modules["fsspec.registry"]
    monkeypatch.setitem(sys.modules, package, None)
    for name, impl in reg_mod.known_implementations.items():
        cls_module = impl["class"].rsplit(".", 1)[0]
        if cls_module.split(".")[0] == package or name in HIDDEN_BY.get(package, ()):
            monkeypatch.delitem(reg_mod._registry, name, raising=False)
            if cls_module.startswith("fsspec.implementations."):
                monkeypatch.delitem(sys.modules, cls_module, raising=False)


HIDDEN_BY = {"aiohttp": ("http", "https")}  # fsspec's own HTTP filesystem imports aiohttp


@pytest.mark.parametrize("url,package,extra", [
    ("s3://bucket/shards/{00000..00002}.tar", "s3fs", "s3"),
    ("gs://bucket/shards/00000.tar", "gcsfs", "gcs"),
    ("https://example.org/shards/00000.tar", "aiohttp", "http"),
])
def test_missing_filesystem_names_the_extra(monkeypatch, url, package, extra):
    _hide_package(monkeypatch, package)
    with pytest.raises(MissingExtra, match=rf"pip install 'recaption\[{extra}\]'"):
        rfs.fs_for(url)


def test_every_verb_says_which_extra_to_install(monkeypatch, tmp_path, shard_dir, capsys):
    _hide_package(monkeypatch, "s3fs")
    s3 = "s3://bucket/shards/{00000..00001}.tar"
    (tmp_path / "c.csv").write_text("key,caption\n000000000,a dog\n")
    verbs = [
        ["caption", s3, "-o", tmp_path / "a"],
        ["score", s3, "-a", tmp_path / "a"],
        ["annotate", s3, "-o", tmp_path / "a"],
        ["mix", s3, "-a", tmp_path / "a", "-o", tmp_path / "o", "--strategy", "raw"],
        ["mix", shard_dir, "-a", "s3://bucket/ann", "-o", "s3://bucket/out", "--strategy", "raw"],
        ["run", "sieve", s3, "-o", tmp_path / "o"],
        ["run", "sieve", shard_dir, "-o", "s3://bucket/out"],
        ["import-captions", s3, "--captions", tmp_path / "c.csv", "-o", tmp_path / "a"],
        ["import-captions", shard_dir, "--captions", "s3://bucket/c.csv", "-o", tmp_path / "a"],
    ]
    for args in verbs:
        assert cli(*args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "pip install 'recaption[s3]'" in err, (args, err)
