"""Shards where users keep them: annotate and mix over real HTTP and S3 servers on 127.0.0.1, and
gzipped shards; every result equals the one made from local plain tars."""
import gzip
import json
import sys
import uuid

import pytest

from recaption.io import annotations as ann
from tests.helpers import tree_bytes
from tests.servers import http_server, leftovers, need_http_client, s3_client_fs
from tests.helpers import cli

pytestmark = pytest.mark.remote
MIX = ["--strategy", "both", "--samples-per-shard", 5, "-q"]


@pytest.fixture(scope="module")
def annotate_args(tiny_models):
    # Captions and CLIP scores exercise every read and write; SIEVE adds model time, not storage paths.
    return ["-c", "sieve", "--model", tiny_models["blip"], "--num-captions", 2, "--seed", 5, "--clip-model",
            tiny_models["clip"], "--no-sieve", "--batch-size", 6, "-q"]


@pytest.fixture(scope="module")
def local_ann(tmp_path_factory, shard_dir, annotate_args):
    """The reference: the sample shards annotated from local plain tars."""
    out = tmp_path_factory.mktemp("local-ann")
    assert cli("annotate", shard_dir, "-o", out, *annotate_args) == 0
    return out


def local_rows(d) -> dict:
    return {p.name: ann.read_rows(str(p)) for p in sorted(d.glob("*.parquet"))}


def test_annotate_and_mix_over_http(shard_dir, local_ann, annotate_args, tmp_path):
    need_http_client()
    with http_server(shard_dir) as base:
        src = f"{base}/{{00000..00002}}.tar"
        assert cli("annotate", src, "-o", tmp_path / "ann", *annotate_args) == 0
        assert cli("mix", src, "-a", tmp_path / "ann", "-o", tmp_path / "out", *MIX) == 0
    assert local_rows(tmp_path / "ann") == local_rows(local_ann)
    assert cli("mix", shard_dir, "-a", local_ann, "-o", tmp_path / "ref", *MIX) == 0
    got = tree_bytes(tmp_path / "out")
    assert got == tree_bytes(tmp_path / "ref") and len([n for n in got if n.endswith(".tar")]) >= 2


def test_gzipped_shards_mix_into_plain_tars(shard_dir, local_ann, tmp_path):
    gz = tmp_path / "gz"
    gz.mkdir()
    for t in sorted(shard_dir.glob("*.tar")):  # same names, so the same annotation files serve
        (gz / (t.stem + (".tgz" if t.stem == "00001" else ".tar.gz"))).write_bytes(gzip.compress(t.read_bytes()))
    args = ["--strategy", "raw", "--keep-sharding", "-q"]
    assert cli("mix", gz, "-a", local_ann, "-o", tmp_path / "out", *args) == 0
    assert cli("mix", shard_dir, "-a", local_ann, "-o", tmp_path / "ref", *args) == 0
    got = tree_bytes(tmp_path / "out")
    assert sorted(n for n in got if n.endswith(".tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert got == tree_bytes(tmp_path / "ref")


@pytest.fixture
def s3_shards(s3_endpoint, shard_dir):
    """A bucket holding the sample shards, and the storage options that reach it. Credentials go
    in the options too, so worker processes started before the fake ones were set still sign."""
    client = s3_client_fs(s3_endpoint)
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    client.mkdir(bucket)
    for t in sorted(shard_dir.glob("*.tar")):
        client.put(str(t), f"{bucket}/shards/{t.name}")
    opts = json.dumps({"s3": {"endpoint_url": s3_endpoint, "key": "recaption-test", "secret": "recaption-test"}})
    return client, bucket, opts


def s3_tree(client, prefix: str) -> dict:
    """tree_bytes of an S3 folder, read back with a client of its own."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        for p in client.ls(prefix, detail=False):
            client.get(p, str(Path(d) / p.rsplit("/", 1)[-1]))
        return tree_bytes(Path(d))


@pytest.mark.slow
def test_s3_annotate_then_mix_to_s3_resumes_after_an_interrupted_write(s3_shards, local_ann, annotate_args,
                                                                       tmp_path, monkeypatch):
    from recaption.stages import write_mix

    client, b, opts = s3_shards
    src, ann_url, out = f"s3://{b}/shards/{{00000..00002}}.tar", f"s3://{b}/ann", f"s3://{b}/mixed"
    assert cli("annotate", src, "-o", ann_url, *annotate_args, "--storage-options", opts) == 0
    for name, rows in local_rows(local_ann).items():
        with client.open(f"{b}/ann/{name}") as f:
            import pyarrow.parquet as pq

            assert pq.read_table(f).to_pylist() == rows

    mix = ["mix", src, "-a", ann_url, "-o", out, *MIX, "--storage-options", opts]
    original = write_mix.write_with

    def interrupted(out_dir, name, fill, extra_stats=None):
        def cut(tar):
            raw, extend, pieces = tar.raw, tar.extend, [0]

            def count(k):
                pieces[0] += k
                if name == "00001" and pieces[0] >= 5:  # the second output shard, some samples in: Ctrl-C mid-upload
                    raise KeyboardInterrupt
            tar.raw = lambda b: count(1) or raw(b)
            tar.extend = lambda p, size: count(len(p)) or extend(p, size)
            return fill(tar)
        return original(out_dir, name, cut, extra_stats)

    monkeypatch.setattr(write_mix, "write_with", interrupted)
    assert cli(*mix) == 130
    names = sorted(p.rsplit("/", 1)[-1] for p in client.ls(f"{b}/mixed", detail=False))
    assert names == ["00000.parquet", "00000.tar", "00000_stats.json", "_decisions", "_dropped.parquet",
                     "_recaption.json"]
    assert leftovers(client, b) == {"temp_objects": [], "pending_uploads": []}

    monkeypatch.setattr(write_mix, "write_with", original)
    monkeypatch.setattr(sys, "argv", ["recaption", *map(str, mix)])  # what _summary.json records
    assert cli(*mix) == 0  # the same command resumes: 00000 is skipped, the rest written
    assert leftovers(client, b) == {"temp_objects": [], "pending_uploads": []}
    summary = json.loads(client.cat(f"{b}/mixed/_summary.json"))
    counts = summary["counts"]
    assert counts["read"] == 18 == counts["written"] + counts["dropped"] and counts["written"] > 10
    assert "<hidden>" in summary["arguments"]["argv"]
    assert opts not in json.dumps(summary)

    # What the interrupted-then-resumed run left equals one uninterrupted run, byte for byte.
    assert cli("mix", src, "-a", ann_url, "-o", tmp_path / "ref", *MIX, "--storage-options", opts) == 0
    assert s3_tree(client, f"{b}/mixed") == tree_bytes(tmp_path / "ref")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["workers", "ray"])
def test_worker_processes_write_to_s3_with_the_options(s3_shards, local_ann, tmp_path, engine, request):
    """Spawned workers and Ray actors get the storage options: without them they would not find
    the server."""
    client, b, opts = s3_shards
    src, out = f"s3://{b}/shards/{{00000..00002}}.tar", f"s3://{b}/{engine}"
    extra = ["--workers", 2] if engine == "workers" else ["--engine", "ray", "--workers", 2]
    if engine == "ray":
        request.getfixturevalue("ray_local")
    assert cli("mix", src, "-a", local_ann, "-o", out, *MIX, *extra, "--storage-options", opts) == 0
    assert cli("mix", src, "-a", local_ann, "-o", tmp_path / "ref", *MIX, "--storage-options", opts) == 0
    assert s3_tree(client, f"{b}/{engine}") == tree_bytes(tmp_path / "ref")
    assert leftovers(client, b) == {"temp_objects": [], "pending_uploads": []}


def test_overlay_on_s3_checks_each_shard_by_etag(s3_shards, local_ann, tmp_path):
    """An overlay written to S3 from shards on S3 records each shard's ETag; samples read from those
    shards (webdataset, or Ray's scheme-less paths) come out mixed, and a shard rewritten with the
    same size is refused by its ETag."""
    import pyarrow.parquet as pq
    import webdataset as wds

    from recaption.errors import RecaptionError
    from recaption.webdataset import overlay

    client, b, opts = s3_shards
    src, ov = f"s3://{b}/shards/{{00000..00002}}.tar", f"s3://{b}/overlay"
    assert cli("mix", src, "-a", local_ann, "-o", ov, *MIX, "--overlay", "--storage-options", opts) == 0
    with client.open(f"{b}/overlay/_decisions/00001.parquet") as f:
        meta = json.loads(pq.read_schema(f).metadata[b"recaption.decisions"])
    assert meta["etag"] and meta["etag"] == client.info(f"{b}/shards/00001.tar")["ETag"]
    assert cli("mix", shard_dir_of(client, b, tmp_path), "-a", local_ann, "-o", tmp_path / "ref", *MIX) == 0
    want = [{k: v for k, v in s.items() if k not in ("__url__", "__local_path__")}
            for s in wds.WebDataset(sorted(str(p) for p in (tmp_path / "ref").glob("*.tar")), shardshuffle=False)]

    def read(prefix, **kw):  # the shards' own bytes, named as a reader of the bucket names them
        local = shard_dir_of(client, b, tmp_path)
        ds = wds.WebDataset(sorted(str(p) for p in local.glob("*.tar")), shardshuffle=False)
        ds = ds.map(lambda s: {**s, "__url__": f"{prefix}/shards/{s['__url__'].rsplit('/', 1)[-1]}"})
        return [{k: v for k, v in s.items() if k not in ("__url__", "__local_path__")}
                for s in ds.compose(overlay(ov, storage_options=opts, **kw))]

    assert read(f"s3://{b}") == want
    assert read(b) == want  # Ray Data's paths: `bucket/key`, checked through the recorded s3:// URL
    data = bytearray(client.cat(f"{b}/shards/00001.tar"))
    data[-5000] ^= 1  # same size, other content
    client.pipe(f"{b}/shards/00001.tar", bytes(data))
    changed = r"00001\.tar: sample '000010000': the shard changed since the overlay was made \(etag"
    with pytest.raises(RecaptionError, match=changed):
        read(f"s3://{b}")
    assert read(f"s3://{b}", verify="size") == want


def shard_dir_of(client, bucket, tmp_path):
    """The bucket's shards, copied down once: the same bytes, read locally."""
    d = tmp_path / "from-s3"
    if not d.exists():
        d.mkdir()
        for p in client.ls(f"{bucket}/shards", detail=False):
            client.get(p, str(d / p.rsplit("/", 1)[-1]))
    return d
