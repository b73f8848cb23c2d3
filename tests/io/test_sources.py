import fsspec
import pytest

from recaption.errors import RecaptionError
from recaption.io.shards import iter_shard
from recaption.io.sources import list_shards, shard_name


def test_directory_is_sorted_tars(shard_dir):
    (shard_dir / "notes.txt").write_text("x")
    got = list_shards(str(shard_dir))
    assert [shard_name(g) for g in got] == ["00000", "00001", "00002"]


def test_single_tar_glob_brace_and_list_file(shard_dir, tmp_path):
    one = str(shard_dir / "00001.tar")
    assert list_shards(one) == [one]
    assert [shard_name(u) for u in list_shards(str(shard_dir / "0000[02].tar"))] == ["00000", "00002"]
    assert [shard_name(u) for u in list_shards(str(shard_dir) + "/{00000..00002}.tar")] == ["00000", "00001", "00002"]
    lst = tmp_path / "shards.txt"
    lst.write_text(f"{shard_dir}/00002.tar\n\n# comment\n{shard_dir}/00000.tar\n")
    assert [shard_name(u) for u in list_shards(str(lst))] == ["00002", "00000"]


def test_file_url_and_memory_filesystem(shard_dir):
    urls = list_shards(f"file://{shard_dir}")
    assert len(urls) == 3 and all(u.startswith("file://") for u in urls)
    assert sum(1 for _ in iter_shard(urls[0])) == 6
    mem = fsspec.filesystem("memory")
    mem.pipe("/bucket/s/00007.tar", (shard_dir / "00000.tar").read_bytes())
    urls = list_shards("memory://bucket/s")
    assert len(urls) == 1 and urls[0].startswith("memory://") and shard_name(urls[0]) == "00007"
    keys = [r.key for r in iter_shard(urls[0])]
    assert len(keys) == 6 and keys[0] == "000000000"


@pytest.mark.parametrize("spec", ["/nope/x.tar", "/nope/dir/*.tar"])
def test_missing_input_is_a_clear_error(spec):
    with pytest.raises(RecaptionError, match="not found|no shards"):
        list_shards(spec)


def test_empty_directory(tmp_path):
    with pytest.raises(RecaptionError, match=r"no \*\.tar"):
        list_shards(str(tmp_path))
