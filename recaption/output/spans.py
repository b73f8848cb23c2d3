"""The mix writer's fast path: an input shard's kept samples copied as byte spans found by the
member index its decisions carry (`recaption.io.tarindex`), never by parsing a tar header.

Consecutive kept samples are read together (one read of up to `READ_BYTES` into a reused
buffer, reading over short runs of dropped samples rather than seeking past them). A read's new
members are then made a column at a time: `txt` and `syn.txt` from the decisions, `json` with the
`recaption` field spliced into each sample's own text (`members.splice_many`, the rules of
`members.splice_recaption`; texts it cannot splice, and samples without json, go through
`members.kept_members` as on the slow path), their tar headers as numpy columns
(`tarcopy.members_blocks`). Each sample is then two pieces, its own members up to its `txt` and
its new members, handed to the `BlockWriter`, which writes them in batched `writev`s from a thread
of its own; a sample laid out otherwise gets its spans and new members in their places. A sample
of `LARGE` bytes or more is not read: its spans are copied in the kernel (`copy_file_range`)
where both files are local, and only its json text is read. Both paths write the same bytes.
"""
from __future__ import annotations

import json
import os
import queue
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaption.errors import RecaptionError
from recaption.io import arrays, tarindex
from recaption.io.tarcopy import BLOCK, BlockWriter, members_blocks, views
from recaption.output.members import kept_members, splice_many

READ_BYTES = 8 << 20  # one read covers consecutive samples up to this many bytes
GAP = 64 << 10  # dropped samples shorter than this between kept ones are read over, not skipped
LARGE = 4 << 20  # a sample this long is copied span by span, in the kernel where it can be
META = ("url", "width", "height", "original_width", "original_height", "sha256")  # from the json, for the parquet


def usable(rows: pa.Table) -> bool:
    """Whether every row (a kept sample) has its member index."""
    return set(tarindex.NAMES) <= set(rows.column_names) and rows["tar_offset"].null_count == 0


class Buffers:
    """A few read buffers of `READ_BYTES`, each reused once the writer has written what was read
    into it (new ones would cost a page fault every 4 KB, and a read is copied into them). One
    set serves a process (`shared`): its output shards are written one after another."""

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


_SHARED: list[Buffers] = []


def shared() -> Buffers:
    """This process's read buffers (32 MB once made)."""
    if not _SHARED:
        _SHARED.append(Buffers())
    return _SHARED[0]


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


def _list(col) -> list[int]:
    return arrays.ints(col, -1)[0].tolist()  # -1: no such member


def _named(keys: pa.Array, suffix: str) -> pa.Array:
    return pc.binary_join_element_wise(keys, suffix, "")


def reads(start: list[int], size: list[int]):
    """The reads of a part: (first, end) sample ranges, each sample whole in one read of at most
    `READ_BYTES`, consecutive samples together unless more than `GAP` lies between them; a
    sample of `LARGE` bytes or more alone, with big=True (it is not read whole)."""
    i, n = 0, len(start)
    while i < n:
        s = start[i]
        last, j = s + size[i], i + 1
        if size[i] >= LARGE:
            yield i, j, True
            i = j
            continue
        while j < n:
            sj = start[j]
            ej = sj + size[j]
            if sj < last or sj - last > GAP or ej - s > READ_BYTES or size[j] >= LARGE:
                break
            last, j = ej, j + 1
        yield i, j, False
        i = j


def write_part(tar: BlockWriter, src: Source, rows: pa.Table, strategy: str, added: list[bytes],
               buffers: Buffers, progress=None, every: int = 256, level: str = "none",
               keys_text: list[bytes] | None = None, *, extra: tuple[str, ...]) -> dict[str, list]:
    """Write the kept samples `rows` (a decisions slice with the index, in shard order) from
    `src` to `tar`, reading into `buffers`; returns the parquet columns taken from each sample's
    json (`META`). Per read, the new members are made a column at a time (`tarcopy.members_blocks`,
    `members.splice_many`); each sample is then two pieces (its own span, its new members) in the
    usual layout, or its spans and new members in their places otherwise. `extra` is the
    strategy's extra members (only `syn.txt` is copied this way)."""
    n = rows.num_rows
    keys = rows["key"].combine_chunks()
    txt = members_blocks(_named(keys, ".txt"), rows["caption"].combine_chunks())
    syn = (members_blocks(_named(keys, ".syn.txt"), rows["synthetic_caption"].combine_chunks())
           if "syn.txt" in extra else pa.nulls(n, pa.binary()))
    json_names = _named(keys, ".json")
    key_list = keys.to_pylist()
    added_all = pa.array(added, pa.binary())
    keys_all = pa.array(keys_text if keys_text is not None else [b""] * n, pa.binary())  # the --caption-keys
    start, size = _list(rows["tar_offset"]), _list(rows["tar_size"])
    t_off, t_size = _list(rows["tar_txt_offset"]), _list(rows["tar_txt_size"])
    j_off, j_size = _list(rows["tar_json_offset"]), _list(rows["tar_json_size"])
    s_off, s_size = _list(rows["tar_syn_offset"]), _list(rows["tar_syn_size"])
    jd_off, jd_size = _list(rows["tar_json_data_offset"]), _list(rows["tar_json_data_size"])
    has_syn = syn.is_valid().to_numpy(zero_copy_only=False).tolist()
    kernel = tar.kernel_copies and src.fd is not None
    metas: dict[str, list] = {k: [] for k in META}
    held = None
    try:
        for i, j, big in reads(start, size):
            m = j - i
            held = None if big else buffers.take()
            w0 = start[i]
            buf = None if big else src.read(w0, start[j - 1] + size[j - 1] - w0, held)
            texts = [None if j_off[k] < 0 else bytes(src.read(jd_off[k], jd_size[k])) if big
                     else bytes(buf[jd_off[k] - w0 : jd_off[k] - w0 + jd_size[k]]) for k in range(i, j)]
            jsn, meta = _jsons(texts, added_all.slice(i, m), rows, i, strategy, keys_all.slice(i, m), level, extra)
            for name, lst in metas.items():
                lst.extend(d.get(name) for d in meta)
            jblocks = members_blocks(json_names.slice(i, m), jsn)
            new = pc.binary_join_element_wise(txt.slice(i, m), jblocks, syn.slice(i, m).fill_null(b""), b"")
            new_view, new_at = views(new)
            pieces, nbytes = [], 0
            for k in range(i, j):
                s = start[k]
                _check_name(src.read(s, BLOCK) if big else buf[s - w0 : s - w0 + BLOCK], key_list[k], src.url, s)
                e, to, jo, q = s + size[k], t_off[k], j_off[k], k - i
                usual = to >= 0 and jo == to + t_size[k] and jo + j_size[k] == e and not (has_syn[k] and s_off[k] >= 0)
                if usual and not big:
                    # the usual layout (other members, then txt and json): its span, then the new members
                    pieces.append(buf[s - w0 : to - w0])
                    pieces.append(new_view[new_at[q] : new_at[q + 1]])
                    nbytes += to - s + new_at[q + 1] - new_at[q]
                else:
                    nbytes += _placed(pieces, src, buf, w0, s, e, kernel, big,
                                      (to, t_size[k], txt[k].as_py()), (jo, j_size[k], jblocks[q].as_py()),
                                      (s_off[k] if has_syn[k] else -1, s_size[k], syn[k].as_py()))
            tar.extend(pieces, nbytes)
            tar.flush(None if held is None else partial(buffers.give, held))
            held = None
            if progress and (j // every) != (i // every):
                progress((j // every - i // every) * every)
    finally:
        if held is not None:  # a read not handed to the writer (an error): its buffer goes back
            buffers.give(held)
    if progress and n % every:
        progress(n % every)
    return metas


def _jsons(texts: list, added: pa.Array, rows: pa.Table, i0: int, strategy: str, keys: pa.Array,
           level: str, extra: tuple[str, ...]) -> tuple[pa.Array, list[dict]]:
    """The new json text of each sample of a read, and its parsed object (for the parquet)."""
    spliced = splice_many(texts, added, keys)
    ok = spliced.is_valid().to_numpy(zero_copy_only=False)
    good = [t for t, y in zip(texts, ok) if y]
    try:  # one parse for the read: the texts are JSON objects (annotate parsed each one)
        parsed = iter(json.loads(b"[" + b",".join(good) + b"]")) if good else iter(())
    except ValueError:
        parsed = iter([json.loads(t) for t in good])
    meta = [next(parsed) if y else None for y in ok]
    if not ok.all():  # no json, or one to be written anew: the slow path's own function
        out = spliced.to_pylist()
        for q in np.flatnonzero(~ok).tolist():
            meta[q], made = kept_members(rows.slice(i0 + q, 1).to_pylist()[0], strategy, texts[q], added[q].as_py(),
                                         level, keys[q].as_py(), extra=extra)
            out[q] = made["json"]
        spliced = pa.array(out, pa.binary())
    return spliced, meta


def _placed(pieces: list, src: Source, buf, w0: int, s: int, e: int, kernel: bool, big: bool, *members) -> int:
    """A sample's pieces where its layout is not the usual one: each replaced member's new blocks in
    its place, spans of its own between them, the new members it lacked after, in order."""
    reps = sorted((o, z, b) for o, z, b in members if o >= 0 and b is not None)
    n, cur = 0, s
    for o, z, b in reps:
        n += _copy(pieces, src, buf, w0, cur, o, kernel, big)
        pieces.append(b)
        n += len(b)
        cur = o + z
    n += _copy(pieces, src, buf, w0, cur, e, kernel, big)
    for o, _, b in members:
        if o < 0 and b is not None:
            pieces.append(b)
            n += len(b)
    return n


def _copy(pieces: list, src: Source, buf, w0: int, a: int, b: int, kernel: bool, big: bool) -> int:
    """Bytes [a, b) of the shard as pieces: from the read buffer, or (a large sample) a kernel
    copy, or read apart."""
    if b <= a:
        return 0
    if not big:
        pieces.append(buf[a - w0 : b - w0])
    elif kernel:
        pieces.append((src.fd, a, b - a))
    else:
        for at in range(a, b, READ_BYTES):
            pieces.append(src.read(at, min(READ_BYTES, b - at)))
    return b - a


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
