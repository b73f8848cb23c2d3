import gzip
import json

import fsspec
import pytest

from recaption.errors import RecaptionError
from recaption.io.shards import iter_shard
from recaption.io.sources import check_unique_names, list_shards, sample_count_hint, shard_name


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


@pytest.fixture
def gz_dir(shard_dir, tmp_path):
    """The sample shards gzipped, as `.tar.gz` and `.tgz`, beside a note that is no shard."""
    d = tmp_path / "gz"
    d.mkdir()
    for i, suffix in enumerate([".tar.gz", ".tgz", ".tar.gz"]):
        (d / f"{i:05d}{suffix}").write_bytes(gzip.compress((shard_dir / f"{i:05d}.tar").read_bytes()))
    (d / "notes.txt").write_text("x")
    return d


def test_gzipped_shards_are_listed_and_named_without_their_whole_suffix(gz_dir):
    assert [shard_name(u) for u in list_shards(str(gz_dir))] == ["00000", "00001", "00002"]
    assert [shard_name(u) for u in list_shards(str(gz_dir / "*.tar.gz"))] == ["00000", "00002"]
    assert [shard_name(u) for u in list_shards(str(gz_dir / "0000{0..1}.t*"))] == ["00000", "00001"]
    assert list_shards(str(gz_dir / "00001.tgz")) == [str(gz_dir / "00001.tgz")]
    assert shard_name("https://h/x/00012.tar.gz?download=true") == "00012"


def test_a_plain_and_a_gzipped_copy_of_one_shard_clash_by_name(gz_dir, shard_dir):
    with pytest.raises(RecaptionError, match="share the name '00000'"):
        check_unique_names([str(shard_dir / "00000.tar"), str(gz_dir / "00000.tar.gz")])


def test_list_file_is_recognised_as_text_not_by_a_failed_decode(gz_dir, shard_dir, tmp_path):
    lst = tmp_path / "shards"  # no suffix: its content says it is a list
    lst.write_text(f"{gz_dir}/00001.tgz\n{shard_dir}/00002.tar\n")
    assert [shard_name(u) for u in list_shards(str(lst))] == ["00001", "00002"]
    # A shard without a suffix is taken as one shard, gzipped or not.
    (tmp_path / "nosuffix-gz").write_bytes((gz_dir / "00000.tar.gz").read_bytes())
    (tmp_path / "nosuffix-tar").write_bytes((shard_dir / "00000.tar").read_bytes())
    assert list_shards(str(tmp_path / "nosuffix-gz")) == [str(tmp_path / "nosuffix-gz")]
    assert list_shards(str(tmp_path / "nosuffix-tar")) == [str(tmp_path / "nosuffix-tar")]
    assert len(list(iter_shard(str(tmp_path / "nosuffix-gz")))) == 6
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RecaptionError, match="neither a shard .* nor a text file listing shards"):
        list_shards(str(tmp_path / "blob.bin"))


def test_progress_hint_reads_stats_beside_a_gzipped_shard(gz_dir):
    (gz_dir / "00000_stats.json").write_text(json.dumps({"successes": 6, "count": 7}))
    (gz_dir / "00001_stats.json").write_text(json.dumps({"count": 5}))
    assert sample_count_hint(str(gz_dir / "00000.tar.gz")) == 6
    assert sample_count_hint(str(gz_dir / "00001.tgz")) == 5
    assert sample_count_hint(str(gz_dir / "00002.tar.gz")) is None
