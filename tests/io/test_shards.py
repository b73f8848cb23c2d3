import gzip
import io
import json
import tarfile

from recaption.io.shards import ReadFailure, ReadOptions, Sample, iter_shard, split_member
from recaption.demo.samples import write_tar


def _tar(path, members):
    with tarfile.open(path, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def test_split_member():
    assert split_member("a/b/000001.syn.txt") == ("a/b/000001", "syn.txt")
    assert split_member("000001.jpg") == ("000001", "jpg")
    assert split_member("README") is None


def test_samples_keep_every_member(shard_dir):
    recs = list(iter_shard(str(shard_dir / "00000.tar")))
    assert all(isinstance(r, Sample) for r in recs)
    r = recs[0]
    assert set(r.members) >= {"txt", "json"} and r.image_field in ("jpg", "png")
    txt = r.members["txt"].decode()
    assert r.raw_caption == (txt if txt.strip() else None)
    assert r.meta["key"] == r.key
    assert [x.index for x in recs] == list(range(6))


def test_image_key_priority(tmp_path):
    p = _tar(tmp_path / "s.tar", [("k.png", b"P"), ("k.jpg", b"J"), ("k.txt", b"t")])
    (r,) = iter_shard(str(p))
    assert r.image_field == "jpg"
    (r,) = iter_shard(str(p), ReadOptions(image_keys=("png", "jpg")))
    assert r.image_field == "png" and r.image_bytes == b"P"


def test_bad_samples_become_records_and_reading_goes_on(tmp_path):
    p = _tar(tmp_path / "s.tar", [
        ("a.txt", b"no image"),
        ("b.jpg", b"x"), ("b.json", b"{not json"),
        ("c.jpg", b"x"), ("c.json", b"[1, 2]"),
        ("d.jpg", b"x"), ("d.txt", b"\xff\xfe bad"),
        ("e.jpg", b""),
        ("../evil.jpg", b"x"),
        ("f.jpg", b"x"), ("f.txt", b"ok"), ("f.json", json.dumps({"url": "u"}).encode()),
        ("g.jpg", b"x"), ("h.jpg", b"x"), ("g.txt", b"dup"),
    ])
    recs = list(iter_shard(str(p)))
    why = {r.key: r.reason for r in recs if isinstance(r, ReadFailure)}
    assert "no image member" in why["a"]
    assert "invalid json" in why["b"]
    assert "not an object" in why["c"]
    assert "not UTF-8" in why["d"]
    assert "empty" in why["e"]
    assert "'..'" in why["../evil"]
    assert "duplicate key" in why["g"]
    ok = [r for r in recs if isinstance(r, Sample)]
    assert [r.key for r in ok] == ["f", "g", "h"]
    assert len(recs) == 10  # every sample accounted for, once


def test_truncated_tar_yields_samples_then_shard_error(shard_dir, tmp_path):
    data = (shard_dir / "00000.tar").read_bytes()
    p = tmp_path / "cut.tar"
    p.write_bytes(data[: len(data) // 2])
    recs = list(iter_shard(str(p)))
    assert isinstance(recs[-1], ReadFailure) and recs[-1].key is None
    assert "truncated" in recs[-1].reason
    good = [r for r in recs if isinstance(r, Sample)]
    assert 0 < len(good) < 6
    assert [r.key for r in good] == [f"00000000{i}" for i in range(len(good))]


def test_non_tar_named_tar(tmp_path):
    p = tmp_path / "x.tar"
    p.write_bytes(b"this is not a tar file at all" * 50)
    (rec,) = list(iter_shard(str(p)))
    assert isinstance(rec, ReadFailure) and rec.key is None and "not a tar" in rec.reason


def test_empty_tar_is_a_shard_error(tmp_path):
    p = write_tar(tmp_path / "empty.tar", [])
    (rec,) = list(iter_shard(str(p)))
    assert rec.key is None and "no samples" in rec.reason
    p.write_bytes(b"")
    (rec,) = list(iter_shard(str(p)))
    assert rec.key is None and "not a tar" in rec.reason


def test_empty_txt_is_no_alt_text(tmp_path):
    p = _tar(tmp_path / "s.tar", [("a.jpg", b"x"), ("a.txt", b"  \n")])
    (r,) = iter_shard(str(p))
    assert r.raw_caption is None and r.members["txt"] == b"  \n"


def test_gzipped_shard_streams_the_same_samples(shard_dir, tmp_path):
    raw = (shard_dir / "00001.tar").read_bytes()
    for name in ("00001.tar.gz", "00001.tgz", "mislabelled.tar"):  # "r|*" sniffs a gzip named .tar
        (tmp_path / name).write_bytes(gzip.compress(raw))
        got = list(iter_shard(str(tmp_path / name)))
        want = list(iter_shard(str(shard_dir / "00001.tar")))
        assert [g.members for g in got] == [w.members for w in want]
        assert {g.shard for g in got} == {"00001" if name.startswith("00001") else "mislabelled"}


def test_truncated_or_corrupt_gzip_keeps_what_was_read_and_names_the_break(shard_dir, tmp_path):
    gz = gzip.compress((shard_dir / "00000.tar").read_bytes())
    (tmp_path / "cut.tar.gz").write_bytes(gz[: int(len(gz) * 0.7)])
    recs = list(iter_shard(str(tmp_path / "cut.tar.gz")))
    assert isinstance(recs[-1], ReadFailure) and recs[-1].key is None
    assert "truncated or corrupt" in recs[-1].reason
    assert 0 < sum(isinstance(r, Sample) for r in recs) < 6
    bad = bytearray(gz)
    bad[-8:-4] = bytes(4)  # wrong CRC: gzip's reader catches what tarfile's stream would not
    (tmp_path / "crc.tar.gz").write_bytes(bytes(bad))
    recs = list(iter_shard(str(tmp_path / "crc.tar.gz")))
    assert isinstance(recs[-1], ReadFailure) and "CRC" in recs[-1].reason
    (tmp_path / "notgz.tar.gz").write_bytes(b"plain text, not gzip" * 50)
    (fail,) = list(iter_shard(str(tmp_path / "notgz.tar.gz")))
    assert fail.key is None and "not a tar file" in fail.reason


# -- issue 32: one bad sample costs only itself ---------------------------------------------------
def _hostile(tmp_path):
    """A shard whose middle samples hold hostile json, with good samples after them."""
    ok = json.dumps({"url": "u"}).encode()
    return _tar(tmp_path / "h.tar", [
        ("a.jpg", b"x"), ("a.json", ok),
        ("big.jpg", b"x"), ("big.json", b'{"n": ' + b"9" * 5001 + b"}"),
        ("deep.jpg", b"x"), ("deep.json", b"[" * 200_000 + b"]" * 200_000),
        ("deepobj.jpg", b"x"), ("deepobj.json", b'{"a": ' * 150 + b"1" + b"}" * 150),
        ("str.jpg", b"x"), ("str.json", json.dumps({"t": "[" * 500}).encode()),  # brackets in a string
        ("z.jpg", b"x"), ("z.json", ok),
    ])


def test_hostile_json_is_that_sample_s_error_and_the_shard_goes_on(tmp_path):
    recs = list(iter_shard(str(_hostile(tmp_path))))
    why = {r.key: r.reason for r in recs if isinstance(r, ReadFailure)}
    assert [r.key for r in recs if isinstance(r, Sample)] == ["a", "str", "z"]  # read on past the bad ones
    assert set(why) == {"big", "deep", "deepobj"} and len(recs) == 6  # no shard failure
    assert "integer of 5001 digits" in why["big"] and "--max-json-int-digits" in why["big"]
    assert "200000 levels" in why["deep"] and "--max-json-depth" in why["deep"]
    assert "150 levels" in why["deepobj"]


def test_json_limits_are_options(tmp_path):
    from recaption.io.shards import ReadLimits

    lim = ReadLimits(max_json_depth=200, max_json_bytes=2000)
    recs = list(iter_shard(str(_hostile(tmp_path)), ReadOptions(limits=lim)))
    why = {r.key: r.reason for r in recs if isinstance(r, ReadFailure)}
    assert set(why) == {"big", "deep"}  # 150 levels are within 200
    assert "is 5008 bytes, over the limit of 2000 (--max-json-bytes)" in why["big"]
    assert "over the limit of 2000 (--max-json-bytes)" in why["deep"]  # refused by size, before it is read
    assert [r.key for r in recs if isinstance(r, Sample)] == ["a", "deepobj", "str", "z"]
    p = _tar(tmp_path / "n.tar", [("a.jpg", b"x"), ("a.json", b'{"n": -12345}'),
                                  ("b.jpg", b"x"), ("b.json", b'{"n": 123}')])
    a, b = iter_shard(str(p), ReadOptions(limits=ReadLimits(max_json_int_digits=3)))
    assert "integer of 5 digits, over the limit of 3" in a.reason and b.meta == {"n": 123}


def test_a_member_over_the_size_limit_is_not_read_even_gzipped(tmp_path):
    import tracemalloc

    from recaption.io.shards import ReadLimits

    inflating = 64 << 20  # a few tens of KB gzipped
    p = _tar(tmp_path / "b.tar", [("a.jpg", b"x"), ("bomb.jpg", bytes(inflating)), ("bomb.txt", b"t"),
                                  ("z.jpg", b"x")])
    gz = tmp_path / "b.tar.gz"
    gz.write_bytes(gzip.compress(p.read_bytes(), 1))
    p.unlink()
    assert gz.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        recs = list(iter_shard(str(gz), ReadOptions(limits=ReadLimits(max_member_bytes=1 << 20))))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # the member was skipped, never held
    assert [r.key for r in recs if isinstance(r, Sample)] == ["a", "z"] and len(recs) == 3
    (bad,) = [r for r in recs if isinstance(r, ReadFailure)]
    assert bad.key == "bomb" and f"is {inflating} bytes, over the limit of 1048576 (--max-member-bytes)" in bad.reason


def test_limits_out_of_range_are_refused_naming_the_option():
    import pytest

    from recaption.errors import RecaptionError
    from recaption.io.shards import ReadLimits

    for kw, flag in [({"max_member_bytes": 0}, "--max-member-bytes"), ({"max_json_depth": 10_000}, "--max-json-depth"),
                     ({"max_json_int_digits": 10**9}, "--max-json-int-digits")]:
        with pytest.raises(RecaptionError, match=flag):
            ReadLimits(**kw).checked()


def test_a_tar_cut_between_members_is_a_truncated_shard(shard_dir, tmp_path):
    import tarfile as tf

    src = shard_dir / "00000.tar"
    with tf.open(src) as t:
        members = t.getmembers()
    # the header of the first member of the fourth sample: cut exactly there, no end blocks
    keys = []
    for m in members:
        k = split_member(m.name)[0]
        if k not in keys:
            keys.append(k)
        if len(keys) == 4:
            cut = m.offset
            break
    for name, data in [("cut.tar", src.read_bytes()[:cut]), ("cut.tar.gz", gzip.compress(src.read_bytes()[:cut]))]:
        (tmp_path / name).write_bytes(data)
        recs = list(iter_shard(str(tmp_path / name)))
        assert [r.key for r in recs if isinstance(r, Sample)] == keys[:2]
        assert recs[2].key == keys[2] and "may be cut off" in recs[2].reason  # its last members may be missing
        assert recs[-1].key is None and "truncated tar" in recs[-1].reason and "end-of-archive" in recs[-1].reason
        assert len(recs) == 4
