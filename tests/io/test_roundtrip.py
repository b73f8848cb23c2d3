"""Read a shard set and write it back: members byte-identical, keys and order kept."""
import json

import pytest
import pyarrow.parquet as pq
import webdataset as wds

from recaption.io.shards import iter_shard
from tests.helpers import write_shard


def test_roundtrip_is_byte_identical_and_reads_with_webdataset(shard_dir, tmp_path):
    src = [r for r in iter_shard(str(shard_dir / "00001.tar"))]
    write_shard(str(tmp_path), "00000", ((r.key, r.members, {"key": r.key}) for r in src))
    back = list(iter_shard(str(tmp_path / "00000.tar")))
    assert [r.key for r in back] == [r.key for r in src]
    for a, b in zip(src, back):
        assert list(a.members) == list(b.members)
        assert all(a.members[f] == b.members[f] for f in a.members)
    upstream = list(wds.WebDataset(str(tmp_path / "00000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in upstream] == [r.key for r in src]
    assert upstream[0]["txt"] == src[0].members["txt"]
    stats = json.loads((tmp_path / "00000_stats.json").read_text())
    assert stats["count"] == stats["successes"] == len(src)
    assert pq.read_table(tmp_path / "00000.parquet").column("key").to_pylist() == [r.key for r in src]


def test_interrupted_write_leaves_no_file(shard_dir, tmp_path):
    def boom():
        for i, r in enumerate(iter_shard(str(shard_dir / "00000.tar"))):
            if i == 3:
                raise RuntimeError("killed")
            yield r.key, r.members, {"key": r.key}

    with pytest.raises(RuntimeError, match="killed"):
        write_shard(str(tmp_path), "00000", boom())
    assert list(tmp_path.iterdir()) == []
