"""The mix writer's fast path: an input shard's kept samples copied as byte spans found by the
member index its decisions carry (`recaption.io.tarindex`), never by parsing a tar header.

Consecutive kept samples are read together (one read of up to `READ_BYTES`, reading over short
runs of dropped samples rather than seeking past them); each sample is then a few pieces of that
buffer (its members before, between and after the replaced ones) and its new members, handed to
the `BlockWriter`, which writes them in batched `writev`s from a thread of its own. A sample of
`LARGE` bytes or more is not read: its spans are copied in the kernel (`copy_file_range`) where
both files are local, and only its json text is read. The json gets the `recaption` field
spliced in without parsing where `members.splice_recaption` can (it parses only to fill the
parquet row); anything else goes through `members.kept_members`, as the slow path does, so both
paths write the same bytes.
"""
from __future__ import annotations

import json
import os
import queue
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from recaption.errors import RecaptionError
from recaption.io import tarindex
from recaption.io.tarcopy import BLOCK, BlockWriter, member_blocks
from recaption.mixing.members import kept_members, splice_recaption

READ_BYTES = 8 << 20  # one read covers consecutive samples up to this many bytes
GAP = 64 << 10  # dropped samples shorter than this between kept ones are read over, not skipped
LARGE = 4 << 20  # a sample this long is copied span by span, in the kernel where it can be
META = ("url", "width", "height", "original_width", "original_height", "sha256")  # from the json, for the parquet


def usable(rows: pa.Table) -> bool:
    """Whether every row (a kept sample) has its member index."""
    return set(tarindex.NAMES) <= set(rows.column_names) and rows["tar_offset"].null_count == 0


class Buffers:
    """A few read buffers of `READ_BYTES`, each reused once the writer has written what was read
    into it (new ones would cost a page fault every 4 KB, and a read is copied into them)."""

    def __init__(self, most: int = 4):
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        self.made, self.most = 0, most

    def take(self) -> bytearray:
        """A free buffer; waits for the writer when every one is in use."""
        if self.free.empty() and self.made < self.most:
            self.made += 1
            return bytearray(READ_BYTES)
        return self.free.get()

    def give(self, buf: bytearray) -> None:
        """Return a buffer (from the writer's thread)."""
        self.free.put(buf)


class Source:
    """An input shard opened for span reads: an OS file where it is local, else a file object."""

    def __init__(self, url: str, path: str | None, f=None):
        self.url, self.fd, self.f = url, None, f
        if path is not None:
            self.fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        """Close the OS file (after the writer that may copy from it has finished)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self, offset: int, n: int, into: bytearray | None = None) -> memoryview:
        """`n` bytes from `offset` (into a buffer of at least `n` bytes, where given); a shard
        shorter than its index is an error naming it."""
        if self.fd is not None:
            buf = memoryview(bytearray(n) if into is None else into)[:n]
            got = 0
            while got < n:
                k = os.preadv(self.fd, [buf[got:]], offset + got)
                if k == 0:
                    break
                got += k
        else:
            self.f.seek(offset)
            buf = self.f.read(n)
            got = len(buf)
        if got != n:
            raise RecaptionError(f"{self.url} ends before byte {offset + n}, where its member index "
                                 "says a sample ends; it changed since it was annotated: re-annotate it")
        return memoryview(buf)


def _ints(rows: pa.Table, name: str) -> list[int]:
    return pc.fill_null(rows[name], -1).to_numpy().tolist()


def write_part(tar: BlockWriter, src: Source, rows: pa.Table, strategy: str, added: list[bytes],
               buffers: Buffers, progress=None, every: int = 256) -> dict[str, list]:
    """Write the kept samples `rows` (a decisions slice with the index, in shard order) from
    `src` to `tar`, reading into `buffers`; returns the parquet columns taken from each sample's
    json (`META`)."""
    n = rows.num_rows
    keys = rows["key"].to_pylist()
    caps = rows["caption"].cast(pa.binary()).to_pylist()
    syns = rows["synthetic_caption"].cast(pa.binary()).to_pylist() if strategy == "both" else [None] * n
    start, size = _ints(rows, "tar_offset"), _ints(rows, "tar_size")
    t_off, t_size = _ints(rows, "tar_txt_offset"), _ints(rows, "tar_txt_size")
    j_off, j_size = _ints(rows, "tar_json_offset"), _ints(rows, "tar_json_size")
    s_off, s_size = _ints(rows, "tar_syn_offset"), _ints(rows, "tar_syn_size")
    jd_off, jd_size = _ints(rows, "tar_json_data_offset"), _ints(rows, "tar_json_data_size")
    kernel = tar.kernel_copies and src.fd is not None
    metas: dict[str, list] = {k: [] for k in META}
    meta_lists = [metas[k] for k in META]
    raw, loads = tar.raw, json.loads
    w0 = w1 = -1
    buf, held = memoryview(b""), None
    for i in range(n):
        s = start[i]
        e = s + size[i]
        big = e - s >= LARGE
        if not big and (s < w0 or e > w1):  # a new read: this sample and the next ones that fit
            last, j = e, i + 1
            while j < n:
                sj = start[j]
                ej = sj + size[j]
                if sj < last or sj - last > GAP or ej - s > READ_BYTES or ej - sj >= LARGE:
                    break
                last, j = ej, j + 1
            if held is not None:  # the previous read's pieces are all handed over: free it once written
                tar.flush(partial(buffers.give, held))
            held = buffers.take()
            buf, w0, w1 = src.read(s, last - s, held), s, last
        key = keys[i]
        _check_name(src.read(s, BLOCK) if big else buf[s - w0 : s - w0 + BLOCK], key, src.url, s)
        jo = j_off[i]
        if jo < 0:
            text = None
        elif big:
            text = bytes(src.read(jd_off[i], jd_size[i]))
        else:
            a = jd_off[i] - w0
            text = bytes(buf[a : a + jd_size[i]])
        new_json = splice_recaption(text, added[i]) if text else None
        if new_json is not None:
            meta = loads(text)
        else:  # no json, or one to be written anew: the slow path's own function
            meta, new = kept_members(rows.slice(i, 1).to_pylist()[0], strategy, text, added[i])
            new_json = new["json"]
        for lst, k in zip(meta_lists, META):
            lst.append(meta.get(k))
        txt = member_blocks(f"{key}.txt", caps[i])
        jsn = member_blocks(f"{key}.json", new_json)
        syn = None if syns[i] is None else member_blocks(f"{key}.syn.txt", syns[i])
        to = t_off[i]
        if not big and to >= 0 and jo == to + t_size[i] and jo + j_size[i] == e and (syn is None or s_off[i] < 0):
            # the usual layout (other members, then txt and json): one span, then the new members
            raw(buf[s - w0 : to - w0])
            raw(txt)
            raw(jsn)
            if syn is not None:
                raw(syn)
        else:  # each replaced member in its place, raw spans between; missing ones after, in order
            so = s_off[i] if syn is not None else -1
            reps = sorted((o, z, b) for o, z, b in ((to, t_size[i], txt), (jo, j_size[i], jsn), (so, s_size[i], syn))
                          if o >= 0)
            cur = s
            for o, z, b in reps:
                _copy(tar, src, buf, w0, cur, o, kernel)
                raw(b)
                cur = o + z
            _copy(tar, src, buf, w0, cur, e, kernel)
            for o, b in ((to, txt), (jo, jsn), (so, syn)):
                if o < 0 and b is not None:
                    raw(b)
        if progress and (i + 1) % every == 0:
            progress(every)
    if held is not None:
        tar.flush(partial(buffers.give, held))
    if progress and n % every:
        progress(n % every)
    return metas


def _copy(tar: BlockWriter, src: Source, buf: memoryview, w0: int, a: int, b: int, kernel: bool) -> None:
    """Bytes [a, b) of the shard: from the read buffer, or (a large sample) copied or read apart."""
    if b <= a:
        return
    if w0 <= a and b <= w0 + len(buf):
        tar.raw(buf[a - w0 : b - w0])
    elif kernel:
        tar.span(src.fd, a, b - a)
    else:
        for at in range(a, b, READ_BYTES):
            tar.raw(src.read(at, min(READ_BYTES, b - at)))


_EXTENDED = frozenset(b"xgLKX")  # pax, pax global, GNU long name and link, Solaris: the name lies further on


def _check_name(head: memoryview, key: str, url: str, at: int) -> None:
    """Refuse a sample whose first header, where it is a plain ustar one, names another sample (a
    shard changed in a way its size and mtime did not show); extended headers are not parsed."""
    want = key.encode("utf-8", "surrogateescape") + b"."
    if head[: len(want)] == want or head[257:262] != b"ustar" or head[156] in _EXTENDED or head[345] != 0:
        return
    name = bytes(head[:100]).split(b"\0", 1)[0].decode("utf-8", "replace")
    raise RecaptionError(f"{url} changed since it was annotated (byte {at} holds {name!r}, where its index says "
                         f"sample {key!r} starts); re-annotate it")
