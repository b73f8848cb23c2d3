"""Raw member copy: samples grouped and numbered exactly as iter_shard reads them, over every
header kind (ustar, pax long and non-ASCII names, GNU long names, a global pax header), and the
copied blocks read back identically with Python's tarfile and GNU tar."""
import io
import shutil
import subprocess
import tarfile

import pytest

from recaption.io.shards import iter_shard
from recaption.io.tarcopy import BlockWriter, iter_samples, member_blocks

LONG = "deep/" * 25 + "k"  # a key longer than ustar's 100-byte name field


def _add(tar, name, data=b"", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mtime = kind, len(data), link, 1_700_000_000
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_tar(path, fmt, pax_headers=None):
    with tarfile.open(path, "w", format=fmt, pax_headers=pax_headers) as tar:
        _add(tar, "README")  # no field: belongs to no sample
        _add(tar, "a.jpg", b"\xff\xd8 image a")
        _add(tar, "a.txt", b"alt a")
        _add(tar, "dir", kind=tarfile.DIRTYPE)
        _add(tar, "b.jpg", b"image b" * 300)  # spans several blocks
        _add(tar, "b.link", kind=tarfile.SYMTYPE, link="a.jpg")  # not a file: skipped, as iter_shard does
        _add(tar, "b.json", b'{"k": 1}')
        _add(tar, f"{LONG}.jpg", b"image long")
        _add(tar, f"{LONG}.txt", b"alt long")
        _add(tar, "sub/Grüße.jpg", "ü".encode() * 100)
        _add(tar, "sub/Grüße.syn.txt", b"syn")
        _add(tar, "c.jpg", b"")  # empty member
    return path


FORMATS = [
    ("pax", tarfile.PAX_FORMAT, None),
    ("gnu", tarfile.GNU_FORMAT, None),
    ("pax-global", tarfile.PAX_FORMAT, {"comment": "a global header"}),
]


@pytest.mark.parametrize("label,fmt,pax", FORMATS, ids=[f[0] for f in FORMATS])
def test_samples_are_grouped_and_numbered_as_iter_shard(tmp_path, label, fmt, pax):
    path = make_tar(tmp_path / "s.tar", fmt, pax)
    records = [r for r in iter_shard(str(path)) if r.key is not None]  # c (empty image) fails, keeps its place
    with open(path, "rb") as f:
        got = list(iter_samples(f, set(range(10))))
    assert [(p, k) for p, k, _ in got] == [(r.index, r.key) for r in records] == \
        [(0, "a"), (1, "b"), (2, LONG), (3, "sub/Grüße"), (4, "c")]
    for (_, _, ms), r in zip(got, records):
        if hasattr(r, "members"):
            assert [m.field for m in ms] == list(r.members)
            assert {m.field: m.data for m in ms} == r.members


@pytest.mark.slow
@pytest.mark.parametrize("target", ["file", "bytesio"], ids=["os-file", "no-fd"])
@pytest.mark.parametrize("label,fmt,pax", FORMATS, ids=[f[0] for f in FORMATS])
def test_copied_blocks_read_back_with_tarfile_and_gnu_tar(tmp_path, label, fmt, pax, target, monkeypatch):
    import recaption.io.tarcopy as tc

    monkeypatch.setattr(tc, "FLUSH", 700)  # many small flushes, and writev's piece limit, exercised
    monkeypatch.setattr(tc, "IOV_MAX", 3)
    path = make_tar(tmp_path / "s.tar", fmt, pax)
    out = tmp_path / "out.tar"
    with open(path, "rb") as f, (open(out, "wb") if target == "file" else io.BytesIO()) as o:
        w = BlockWriter(o)
        for _, key, ms in iter_samples(f, {1, 2, 3}):  # b, the long key, Grüße: a is skipped
            for m in ms:
                w.member(m)
            w.add(f"{key}.new", "né".encode())
        w.close()
        if target != "file":
            out.write_bytes(o.getvalue())
    assert out.stat().st_size % tarfile.RECORDSIZE == 0
    with tarfile.open(out) as t:
        got = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    with tarfile.open(path) as t:
        src = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
    keep = {n: d for n, d in src.items() if n.startswith(("b.", LONG, "sub/"))}
    new = {f"{k}.new": "né".encode() for k in ("b", LONG, "sub/Grüße")}
    assert got == keep | new
    if shutil.which("tar"):
        dest = tmp_path / "x"
        dest.mkdir()
        subprocess.run(["tar", "-xf", str(out), "-C", str(dest)], check=True)
        assert {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == got


def test_wanted_samples_only_and_stop_after_the_last(tmp_path):
    path = make_tar(tmp_path / "s.tar", tarfile.PAX_FORMAT)
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    b_end = data.index(b"image long")  # truncated inside the third sample
    cut.write_bytes(data[:b_end])
    with open(cut, "rb") as f:
        assert [(p, k) for p, k, _ in iter_samples(f, {0, 1})] == [(0, "a"), (1, "b")]  # never reads further
    with open(cut, "rb") as f, pytest.raises(tarfile.ReadError):
        list(iter_samples(f, {2}))
    with open(path, "rb") as f:
        assert list(iter_samples(f, set())) == []


def test_new_members_are_what_tarfile_writes(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x" * 120 + ".txt")
        info.size, info.mtime, info.mode, info.uname, info.gname = 3, 0, 0o444, "bigdata", "bigdata"
        tar.addfile(info, io.BytesIO(b"abc"))
    o = io.BytesIO()
    w = BlockWriter(o)
    w.raw(member_blocks("x" * 120 + ".txt", b"abc"))
    w.close()
    assert o.getvalue() == buf.getvalue()


@pytest.mark.parametrize("name,data", [("0001.txt", b"abc"), ("d/0001.json", b"x" * 512), ("k" * 96 + ".txt", b""),
                                       ("k" * 97 + ".json", b"long"), ("ü.txt", "ü".encode())])
def test_member_headers_match_tarfile_byte_for_byte(name, data):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "bigdata", "bigdata"
        tar.addfile(info, io.BytesIO(data))
    o = io.BytesIO()
    w = BlockWriter(o)
    w.add(name, data)
    w.close()
    assert o.getvalue() == buf.getvalue()


@pytest.mark.parametrize("name", ["s.tar.gz", "s.tar"], ids=["tar.gz", "gzipped-but-named-tar"])
def test_gzipped_shards_are_read_as_streams(tmp_path, name):
    """A gzip stream cannot seek back: long names (tarfile's path) and skips still work."""
    import gzip

    from recaption.io.shards import open_shard

    plain = make_tar(tmp_path / "plain.tar", tarfile.PAX_FORMAT, {"comment": "g"})
    gz = tmp_path / name
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    with open(plain, "rb") as f:
        want = [(p, k, [m.head + m.body for m in ms]) for p, k, ms in iter_samples(f, {0, 2, 3})]
    with open_shard(str(gz)) as f:
        got = [(p, k, [m.head + m.body for m in ms]) for p, k, ms in iter_samples(f, {0, 2, 3})]
    assert got == want and [k for _, k, _ in got] == ["a", LONG, "sub/Grüße"]
