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
