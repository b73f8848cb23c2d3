"""The member index and the span writer: every index entry is the bytes a header walk copies, and
the writer's output is byte for byte what the writer before the index wrote (kept below as the
reference), on the bundled sample shards, the test shards, and shards of every header kind and
awkward member layout, through in-kernel copies and through plain file objects too."""
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recaption.io import annotations as ann
from recaption.io import tarcopy as tc
from recaption.io import tarindex
from recaption.io.shards import iter_shard, open_shard
from recaption.io.sources import shard_name
from recaption.io.tarcopy import iter_samples
from tests.helpers import write_shard
from recaption.mixing.plan import plan, plan_dict
from recaption.mixing.pool import pool_pass
from recaption.mixing.strategies import MixConfig
from recaption.mixing.strategies.base import named
from recaption.output import recaption_field, spans
from recaption.output.members import READ, kept_members
from recaption.stages import write_mix
from recaption.stages.write_mix import MixWriteStage
from tests.mixing import oracle

SAMPLE_SHARDS = os.path.join(os.path.dirname(write_mix.__file__), "..", "data", "sample-shards")
LONG = "deep/" * 25 + "k"  # longer than ustar's 100-byte name field
JPG = b"\xff\xd8" + bytes(range(256)) * 3


def old_write(p) -> None:
    """The writer as it was before the member index (the reference): a header walk per input
    shard, every member parsed, the parquet made from one dict a row."""
    def samples():
        for part in p.parts:
            t = ann.read_table(part.decisions, columns=READ)
            at = np.flatnonzero(t["kept"].to_numpy(zero_copy_only=False))[part.start : part.end]
            rows = t.take(at)
            want = dict(zip(at.tolist(), zip(rows.to_pylist(), recaption_field.encode(rows, p.strategy))))
            with open_shard(part.url) as f:
                for pos, key, members in iter_samples(f, set(want)):
                    row, added = want[pos]
                    assert key == row["key"]
                    text = None
                    for m in members:
                        if m.field == "json":
                            text = m.data
                    meta, new = kept_members(row, p.strategy, text, added,
                                             extra=tuple(named(p.strategy).extra_members))
                    out = [(m.field, new.pop(m.field)) if m.field in new else m for m in members]
                    out.extend(new.items())
                    yield key, out, {
                        "key": key, "caption": row["caption"], "caption_source": row["caption_source"],
                        "url": meta.get("url"), "raw_caption": row["raw_caption"],
                        "synthetic_caption": row["synthetic_caption"], "clip_raw": row["clip_raw"],
                        "clip_synthetic": row["clip_synthetic"], "sieve": row["sieve"], "blend": row["blend"],
                        "source_shard": shard_name(part.url), "status": "success", "error_message": None,
                        **{k: meta.get(k) for k in ("width", "height", "original_width", "original_height",
                                                    "sha256")}}

    write_shard(p.out_dir, p.name, samples())


def _add(tar, name, data=b"", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mtime = kind, len(data), link, 1_700_000_000
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _meta(key, **more):
    return json.dumps({"url": f"https://x/{key}.jpg", "width": 7, "height": 5, "sha256": "ab" * 32, **more}).encode()


ODD = [  # (key, members in tar order): every layout the writer must keep byte for byte
    ("a", [("jpg", JPG), ("txt", b"alt a"), ("json", _meta("a"))]),
    ("b", [("json", _meta("b")), ("txt", b"alt b"), ("jpg", JPG)]),  # replaced members first
    ("c", [("jpg", JPG), ("txt", b"alt c"), ("json", b'{"url": "c", "score": NaN}')]),  # written anew
    ("d", [("jpg", JPG), ("txt", b"alt d"), ("json", b'{"recaption": 1, "url": "d"}')]),  # replaced field
    ("e", [("jpg", JPG), ("txt", b"alt e"), ("json", b'{"\\u0072ecaption": 2, "url": "e"}')]),  # escaped key
    ("f", [("jpg", JPG), ("txt", b"alt f")]),  # no json
    ("g", [("jpg", JPG), ("json", _meta("g"))]),  # no txt
    ("m", [("jpg", JPG)]),  # neither: both follow, in order
    ("h", [("jpg", JPG), ("txt", b"alt h"), ("json", _meta("h")), ("syn.txt", b"old syn"), ("cls", b"3")]),
    ("k", [("jpg", JPG), ("txt", b"alt k"), ("json", b"")]),  # invalid json: an error row, never kept
    (LONG, [("jpg", JPG), ("txt", b"alt long"), ("json", _meta(LONG))]),  # pax / GNU long names
    ("sub/Grüße", [("png", JPG), ("txt", "alt ü".encode()), ("json", _meta("ü", caption='x"\\y'))]),
    ("j", [("jpg", JPG * 400), ("txt", b"alt j"), ("json", b'{\n  "url": "j",\n  "width": 5\n}\n')]),  # large
    ("l", [("jpg", JPG), ("txt", b"alt l"), ("json", b'{"url": "\\u00e9t\\u00e9", "width": 1.5}')]),
]


def make_odd(path, fmt=tarfile.PAX_FORMAT, pax_headers=None, link_inside=False):
    with tarfile.open(path, "w", format=fmt, pax_headers=pax_headers) as tar:
        _add(tar, "README")  # no field: part of no sample
        for key, members in ODD:
            for i, (field, data) in enumerate(members):
                _add(tar, f"{key}.{field}", data)
                if link_inside and key == "a" and i == 0:  # a member of no sample inside a's run
                    _add(tar, "a.link", kind=tarfile.SYMTYPE, link="a.jpg")
    return path


def annotate(shard_dir, ann_dir, seed=0):
    """Random annotation files as annotate records them: a row a sample read (`iter_shard`, which
    records the index), its index columns, and the shard's identity. Every sample has a candidate,
    so that `synthetic` keeps every one that was read."""
    ann_dir.mkdir(exist_ok=True)
    for t in sorted(shard_dir.glob("*.tar")):
        recs = list(iter_shard(str(t)))
        rows = oracle.random_rows(len(recs), seed=seed, shard=t.stem)
        for r, rec in zip(rows, recs):
            r["key"], r["raw_caption"] = rec.key, getattr(rec, "raw_caption", None)
            r.update(status="ok", error=None, captions=r["captions"] or ["cap"])
            if hasattr(rec, "members"):
                r.update(rec.index_fields())
            else:
                r.update(status="error", error=rec.reason)
        ann.write(str(ann_dir / f"{t.stem}.parquet"), rows, {tarindex.GROUP: tarindex.identity(str(t))})
    return ann_dir


def both_writers(shard_dir, ann_dir, out, cfg, monkeypatch):
    """Plan once; write with the span writer and with the reference; {name: (new, old)} bytes, and
    how many parts the span writer copied as spans."""
    out.mkdir()
    pool = pool_pass(sorted(str(p) for p in shard_dir.glob("*.tar")), str(ann_dir), cfg)
    plans, _ = plan(pool, cfg, str(out))
    calls = []
    real = spans.write_part
    monkeypatch.setattr(spans, "write_part", lambda *a, **k: calls.append(a[2].num_rows) or real(*a, **k))
    for p in plans:
        r = MixWriteStage()(plan_dict(p))
        assert r.status == "done", r
        (out / "old").mkdir(exist_ok=True)
        p.out_dir = str(out / "old")
        old_write(p)
    got = {}
    for f in sorted(out.glob("*.tar")) + sorted(out.glob("0*.parquet")):
        got[f.name] = (f.read_bytes(), (out / "old" / f.name).read_bytes())
    return got, calls


def _same(got):
    assert got and all(new == old for new, old in got.values()), [k for k, (a, b) in got.items() if a != b]
    n = sum(pq.read_metadata(io.BytesIO(new)).num_rows for k, (new, _) in got.items() if k.endswith(".parquet"))
    return n


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd")
    make_odd(d / "00000.tar")
    make_odd(d / "00001.tar", tarfile.GNU_FORMAT)
    make_odd(d / "00002.tar", tarfile.PAX_FORMAT, {"comment": "a global header"})
    return d


def test_the_index_is_the_bytes_a_header_walk_copies(odd_dir):
    for t in sorted(odd_dir.glob("*.tar")):
        data = t.read_bytes()
        with open(t, "rb") as f:
            walked = {k: ms for _, k, ms in iter_samples(f, set(range(len(ODD))))}
        checked = 0
        for rec in iter_shard(str(t)):
            if not hasattr(rec, "members"):
                assert rec.key == "k"  # the invalid json: no row to copy
                continue
            ix = rec.index_fields()
            members = walked[rec.key]
            run = data[ix["tar_offset"] : ix["tar_offset"] + ix["tar_size"]]
            assert run == b"".join(m.head + m.body for m in members)
            for m in members:
                if m.field in tarindex.MEMBERS:
                    p = tarindex.MEMBERS[m.field]
                    at = ix[f"{p}_offset"]
                    assert data[at : at + ix[f"{p}_size"]] == m.head + m.body
                if m.field == "json":
                    at = ix["tar_json_data_offset"]
                    assert data[at : at + ix["tar_json_data_size"]] == m.data
            assert {f for f in tarindex.MEMBERS if ix[f"{tarindex.MEMBERS[f]}_offset"] is not None} == \
                {m.field for m in members} & set(tarindex.MEMBERS)
            checked += 1
        assert checked == len(ODD) - 1


def test_no_index_where_offsets_would_mislead(tmp_path):
    import gzip

    t = make_odd(tmp_path / "s.tar", link_inside=True)
    recs = {r.key: r for r in iter_shard(str(t)) if hasattr(r, "members")}
    assert set(recs["a"].index_fields().values()) == {None}  # a symlink lies inside its run
    assert recs["b"].index_fields()["tar_offset"] is not None
    gz = tmp_path / "g.tar.gz"
    gz.write_bytes(gzip.compress(t.read_bytes()))
    named_plainly = tmp_path / "z.tar"  # gzipped, named .tar: tarfile decompresses it
    named_plainly.write_bytes(gz.read_bytes())
    for p in (gz, named_plainly):
        samples = [r for r in iter_shard(str(p)) if hasattr(r, "members")]
        assert len(samples) == len(ODD) - 1 and all(set(r.index_fields().values()) == {None} for r in samples)


CFGS = [MixConfig("both", samples_per_shard=5), MixConfig("synthetic", samples_per_shard=4),
        MixConfig("raw", keep_sharding=True)]


@pytest.mark.parametrize("cfg", CFGS, ids=[c.strategy for c in CFGS])
@pytest.mark.parametrize("shards", ["odd", "test", "bundled"])
def test_span_writer_writes_what_the_header_walk_wrote(shards, cfg, odd_dir, shard_dir, tmp_path, monkeypatch):
    src = {"odd": odd_dir, "test": shard_dir, "bundled": Path(SAMPLE_SHARDS).resolve()}[shards]
    a = annotate(src, tmp_path / "ann", seed=5)
    got, calls = both_writers(src, a, tmp_path / "out", cfg, monkeypatch)
    n = _same(got)
    assert n > 5 and sum(calls) == n  # every kept sample went through the span writer
    if shards == "odd" and cfg.strategy == "synthetic":  # every layout was written
        assert n == 3 * (len(ODD) - 1)


@pytest.mark.parametrize("mode", ["kernel-copies", "file-objects"])
def test_large_samples_and_no_file_descriptors(mode, odd_dir, tmp_path, monkeypatch):
    """Samples over LARGE: their spans copied in the kernel; or, with no OS file on either side,
    read and written through file objects. The same bytes either way."""
    monkeypatch.setattr(spans, "LARGE", 2048)  # every sample is large
    if mode == "file-objects":
        monkeypatch.setattr(tc, "_fd", lambda f: None)
        monkeypatch.setattr(write_mix, "_source", lambda url, files: spans.Source(url, None, files.enter_context(
            open(url, "rb"))))
    copies = []
    real = tc.copy_range
    monkeypatch.setattr(tc, "copy_range", lambda *a: copies.append(a[3]) or real(*a))
    a = annotate(odd_dir, tmp_path / "ann", seed=1)
    got, calls = both_writers(odd_dir, a, tmp_path / "out", MixConfig("both", samples_per_shard=6), monkeypatch)
    n = _same(got)
    assert sum(calls) == n > 5
    assert (len(copies) > n) if mode == "kernel-copies" else not copies


def test_a_part_without_index_takes_the_header_walk(tmp_path, monkeypatch):
    d = tmp_path / "shards"
    d.mkdir()
    make_odd(d / "00000.tar")
    make_odd(d / "00001.tar", link_inside=True)  # one sample without index: its whole part walks
    a = annotate(d, tmp_path / "ann", seed=2)
    got, calls = both_writers(d, a, tmp_path / "out", MixConfig("raw", keep_sharding=True), monkeypatch)
    n = _same(got)
    assert 0 < sum(calls) < n  # the first shard by spans, the second by the walk


def test_an_index_of_another_shard_state_is_not_carried(tmp_path, monkeypatch, odd_dir):
    d = tmp_path / "shards"
    d.mkdir()
    (d / "00000.tar").write_bytes((odd_dir / "00000.tar").read_bytes())
    a = annotate(d, tmp_path / "ann", seed=2)
    os.utime(d / "00000.tar", ns=(1, 1))  # the shard changed (as far as its mtime says) since it was read
    got, calls = both_writers(d, a, tmp_path / "out", MixConfig("raw"), monkeypatch)
    assert _same(got) > 5 and calls == []  # written by the header walk, which checks every key
    assert "tar_offset" not in pq.read_schema(tmp_path / "out" / "_decisions" / "00000.parquet").names


def _planned_copy(tmp_path, odd_dir):
    """A copy of an odd shard, annotated with its index and planned as a raw mix: (shard, plan)."""
    d = tmp_path / "shards"
    d.mkdir()
    shard = d / "00000.tar"
    shard.write_bytes((odd_dir / "00000.tar").read_bytes())
    a = annotate(d, tmp_path / "ann", seed=2)
    out = tmp_path / "out"
    out.mkdir()
    cfg = MixConfig("raw")
    plans, _ = plan(pool_pass([str(shard)], str(a), cfg), cfg, str(out))
    return shard, plans[0]


def test_a_shard_changed_after_the_plan_fails_with_one_line(tmp_path, odd_dir):
    shard, p = _planned_copy(tmp_path, odd_dir)
    plans = [p]
    os.utime(shard, ns=(1, 1))
    r = MixWriteStage()(plan_dict(plans[0]))
    assert r.status == "failed" and "\n" not in r.error
    assert f"{shard} changed since the mix was planned (mtime" in r.error


def test_a_sample_not_where_its_index_says_is_refused(tmp_path, odd_dir):
    shard, p = _planned_copy(tmp_path, odd_dir)
    plans = [p]
    st = shard.stat()
    data = bytearray(shard.read_bytes())
    at = data.index(b"f.jpg")  # rename sample f's first member in place: same size, mtime put back
    data[at : at + 5] = b"z.jpg"
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = MixWriteStage()(plan_dict(plans[0]))
    assert r.status == "failed" and "\n" not in r.error
    assert f"{shard} changed since it was annotated" in r.error and "'z.jpg'" in r.error


def test_import_captions_records_the_index(shard_dir, tmp_path):
    from recaption import api
    from recaption.engines import Execution

    keys = [r.key for t in sorted(shard_dir.glob("*.tar")) for r in iter_shard(str(t))]
    (tmp_path / "c.csv").write_text("key,caption\n" + "".join(f"{k},cap {k}\n" for k in keys))
    api.import_captions(str(shard_dir), str(tmp_path / "ann"), str(tmp_path / "c.csv"), execution=Execution(quiet=True))
    for t in sorted(shard_dir.glob("*.tar")):
        f = tmp_path / "ann" / f"{t.stem}.parquet"
        rows = ann.read_rows(str(f))
        recs = list(iter_shard(str(t)))
        assert [{c: r[c] for c in tarindex.NAMES} for r in rows] == [x.index_fields() for x in recs]
        assert all(r["tar_offset"] is not None for r in rows)
        assert ann.read_metadata(str(f))["groups"][tarindex.GROUP] == tarindex.identity(str(t))


AWKWARD_JSON = [b'{"a": 1}', b'{}', b' {  } \n', b'{"a": NaN}', b'{"recaption": 1}', b'{"\\u0072ecaption": 1}',
                b'{"\\u00e9": 1}', b'{"a": "Infinity"}', b'{"a": -Infinity}', None, b"",
                b'{"a": [1, {"b": 2}]}\r\n\x0b',
                b'{"a":1}\x0c', b"[1]", '{"ü": "x"}'.encode(), b'{"a": "\\\\u0070"}', b'{"a":1 }  ', b'{"a": "recap',
                b'tion"}', b'{"b": "\xff"}']


def test_splicing_many_texts_at_once_is_splicing_each():
    import pyarrow as pa

    from recaption.output.members import splice_many, splice_recaption

    added = [b'{"n": %d}' % i for i in range(len(AWKWARD_JSON))]
    checked = 0
    for a in range(len(AWKWARD_JSON)):  # every run of texts, as reads group them
        for b in range(a + 1, len(AWKWARD_JSON) + 1):
            got = splice_many(AWKWARD_JSON[a:b], pa.array(added[a:b], pa.binary())).to_pylist()
            assert got == [(t and splice_recaption(t, x)) or None for t, x in zip(AWKWARD_JSON[a:b], added[a:b])]
            checked += 1
    assert checked == len(AWKWARD_JSON) * (len(AWKWARD_JSON) + 1) // 2


def test_member_blocks_made_a_column_at_a_time_are_tarfile_s():
    import pyarrow as pa

    names = ["000000001.txt", "a.json", "k" * 96 + ".txt", "k" * 97 + ".json", "ü.txt", "d/0001.json",
             "x" * 120 + ".txt", "z.syn.txt", "e.txt", "k" * 100]
    datas = [b"abc", b"x" * 512, b"", b"long", "ü".encode(), bytes(range(256)) * 4, b"abc", None, b"y" * 511, b"q"]
    want = [None if d is None else tc.member_blocks(n, d) for n, d in zip(names, datas)]
    for a in range(len(names)):
        for b in range(a, len(names) + 1):
            got = tc.members_blocks(pa.array(names).slice(a, b - a), pa.array(datas, pa.binary()).slice(a, b - a))
            assert got.to_pylist() == want[a:b]
            view, at = tc.views(got.fill_null(b""))
            assert [bytes(view[at[k] : at[k + 1]]) for k in range(b - a)] == [w or b"" for w in want[a:b]]


def test_captioning_and_scoring_record_the_index(shard_dir, tiny_models, tmp_path):
    """The annotate stage records the index for the rows it makes, and a scoring pass that reads
    the images adds it to a file written before the index existed."""
    from tests.helpers import cli

    shard = shard_dir / "00001.tar"
    a = tmp_path / "a"
    assert cli("caption", shard, "-o", a, "-c", tiny_models["blip"], "--max-new-tokens", 3, "-q") == 0
    f = a / "00001.parquet"
    want = [r.index_fields() for r in iter_shard(str(shard))]
    assert [{c: r[c] for c in tarindex.NAMES} for r in ann.read_rows(str(f))] == want
    assert all(w["tar_offset"] is not None for w in want)
    groups = ann.read_metadata(str(f))["groups"]
    assert groups[tarindex.GROUP] == tarindex.identity(str(shard)) and "captions" in groups

    t = pq.read_table(f)  # as a file written before the index: no columns, no identity
    meta = json.loads(t.schema.metadata[b"recaption"])
    del meta["groups"][tarindex.GROUP]
    pq.write_table(t.drop_columns(list(tarindex.NAMES)).replace_schema_metadata(
        {b"recaption": json.dumps(meta).encode()}), f)
    assert cli("score", shard, "-a", a, "--clip-model", tiny_models["clip"], "--no-sieve", "-q") == 0  # reads images
    rows = ann.read_rows(str(f))
    assert [{c: r[c] for c in tarindex.NAMES} for r in rows] == want and rows[0]["clip_captions"]
    assert ann.read_metadata(str(f))["groups"][tarindex.GROUP] == tarindex.identity(str(shard))


@pytest.mark.parametrize("level", ["best", "all"])
def test_caption_keys_are_spliced_the_same_by_spans_and_the_header_walk(odd_dir, tmp_path, monkeypatch, level):
    """The span writer splices `--caption-keys` into each json as the header walk writes them."""
    ann_dir = annotate(odd_dir, tmp_path / "ann")
    cfg = MixConfig("both", caption_keys=level)
    outs = {}
    for how in ("spans", "walk"):
        out = tmp_path / how
        out.mkdir()
        if how == "walk":
            monkeypatch.setattr(spans, "usable", lambda rows: False)
        pool = pool_pass(sorted(str(p) for p in odd_dir.glob("*.tar")), str(ann_dir), cfg)
        plans, _ = plan(pool, cfg, str(out))
        for p in plans:
            assert MixWriteStage()(plan_dict(p)).status == "done"
        outs[how] = {f.name: f.read_bytes() for f in sorted(out.glob("*.tar"))}
    assert outs["spans"] and outs["spans"] == outs["walk"]
    assert any(b'"recaption_raw": ' in b for b in outs["spans"].values())
    if level == "all":
        assert any(b'"recaption_candidate_0": ' in b for b in outs["spans"].values())
