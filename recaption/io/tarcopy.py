"""Copy tar members as raw blocks: read a shard's members without unpacking them, write them back
byte for byte, and add new members with fixed headers.

Plain headers (what every WebDataset writer makes) are parsed here; Python's own `tarfile` parses
every other kind (GNU long names, pax records, sparse maps, global headers), so a member is read
exactly as `iter_shard` reads it. A member's raw blocks (extended headers, header, data, padding)
are then copied unchanged. The data of members nobody wants is skipped with a seek. I/O goes in
large pieces (the reader's buffer, 8 MB `writev`s): per-member system calls, even in-kernel
copies, cost more than the copying itself at WebDataset member sizes. The writer also takes
pieces of other buffers and spans of local files (the span writer, `recaption.output.spans`), and
new members' blocks are made many at a time (`members_blocks`), byte for byte as one at a time.
"""
from __future__ import annotations

import errno
import os
import queue
import tarfile
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from recaption.io.shards import split_member

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
MTIME = 0  # fixed, so a resumed run writes byte-identical tars
ENCODING = "utf-8"


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


class _Tape:
    """A file wrapper for tarfile that first serves a header block already read (no seeking back:
    a gzip stream cannot) and remembers what tarfile reads, so those header bytes can be copied."""

    def __init__(self, f: BinaryIO):
        self.f, self.rec, self.ahead = f, bytearray(), b""

    def prime(self, buf: bytes) -> None:
        self.ahead, self.rec = buf, bytearray()

    def read(self, n: int = -1) -> bytes:
        b, self.ahead = (self.ahead[:n], self.ahead[n:]) if n >= 0 else (self.ahead, b"")
        if n < 0 or len(b) < n:
            b += self.f.read(-1 if n < 0 else n - len(b))
        self.rec += b
        return b

    def tell(self) -> int:
        return self.f.tell() - len(self.ahead)

    def take(self) -> bytes:
        b, self.rec = bytes(self.rec), bytearray()
        return b


@dataclass(slots=True)
class RawMember:
    """One member: its header blocks, and its data with the padding up to the next header."""
    name: str
    field: str
    head: bytes
    body: bytes
    size: int  # content bytes

    @property
    def data(self) -> bytes:
        """The member's file data (without header or padding)."""
        return self.body[: self.size]


class _Headers:
    """Reads one member's header chain at a time. Plain members (a ustar regular-file header with
    a valid checksum and a short name, the kind every WebDataset writer makes) are parsed here;
    anything else goes to `tarfile.TarInfo.fromtarfile`, with this object standing in for the
    TarFile (the attributes that method reads)."""

    def __init__(self, f: BinaryIO):
        self.f, self.fileobj = f, _Tape(f)
        self.encoding, self.errors = ENCODING, "surrogateescape"
        self.pax_headers: dict = {}  # global pax headers, kept by tarfile across members
        self.offset = self.pos = f.tell()  # next header (tarfile keeps `offset` up to date); file position

    def next(self) -> tuple[str, bool, int, bytes] | None:
        """(name, is a regular file, data size, raw header blocks), the file at the data; or
        None at the end of the archive."""
        f, at = self.f, self.offset
        if self.pos != at:
            f.seek(at)
        buf = f.read(BLOCK)
        self.pos = at + len(buf)
        fast = _plain(buf) if not self.pax_headers else None
        if fast is not None:
            name, size = fast
            self.offset = at + BLOCK + _padded(size)
            return name, True, size, buf
        if buf.count(0) == BLOCK or not buf:
            return None  # end-of-archive zero block, or end of file
        self.fileobj.prime(buf)
        try:
            info = tarfile.TarInfo.fromtarfile(self)
        except tarfile.EOFHeaderError:
            return None
        except tarfile.HeaderError as e:
            raise tarfile.ReadError(f"bad tar header at byte {at}: {e}") from None
        # self.offset now points past the data (and a sparse map): copy that whole span
        head = self.fileobj.take()
        self.pos = f.tell()
        size = self.offset - info.offset_data if not info.isreg() or info.issparse() else info.size
        return info.name, info.isfile(), size, head


def _plain(buf: bytes) -> tuple[str, int] | None:
    """(name, size) of a plain ustar regular-file header, or None for tarfile to parse. The
    checksum is not recomputed here: the shard went through tarfile (which checks it) when it
    was annotated, and the writer checks every sample's key against its decisions."""
    if len(buf) != BLOCK or buf[156] not in (48, 0) or buf[257:262] != b"ustar" or buf[124] & 0x80 \
            or buf[345] != 0:
        return None
    try:
        size = int(buf[124:136].rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        return None
    end = buf.find(b"\0", 0, 100)
    name = buf[: 100 if end < 0 else end].decode(ENCODING, "surrogateescape")
    if name.endswith("/") or not name:
        return None  # a directory in the old style, or nonsense: tarfile decides
    return name, size


def _split(name: str) -> tuple[str, str] | None:
    if "/" not in name:  # the common case, without posixpath
        stem, dot, fld = name.partition(".")
        return (stem, fld) if dot else None
    return split_member(name)


def iter_samples(f: BinaryIO, wanted: set[int]) -> Iterator[tuple[int, str, list[RawMember]]]:
    """(position, key, members) of the samples at `wanted` positions, grouped and numbered as
    `iter_shard` does (consecutive file members sharing a key); stops after the last one."""
    if not wanted:
        return
    last = max(wanted)
    heads = _Headers(f)
    pos, key, cur = -1, None, None
    while (h := heads.next()) is not None:
        name, isfile, size, head = h
        parts = _split(name) if isfile else None
        if parts is None:
            continue
        k, fld = parts
        if k != key:
            if cur is not None:
                yield pos, key, cur
            pos, key = pos + 1, k
            if pos > last:
                return
            cur = [] if pos in wanted else None
        if cur is None:
            continue
        span = heads.offset - heads.pos
        body = f.read(span)
        heads.pos += len(body)
        if len(body) != span:
            raise tarfile.ReadError(f"unexpected end of data in member {name!r}")
        cur.append(RawMember(name, fld, head, body, size))
    if cur is not None:
        yield pos, key, cur


_USTAR_MID = b"0000444\0" + b"0000000\0" * 2  # mode 0o444, uid 0, gid 0
_USTAR_MTIME = b"%011o\0" % MTIME
_USTAR_TAIL = (  # after the checksum: tarfile's bytes for our fixed fields
    b"0" + b"\0" * 100 + tarfile.POSIX_MAGIC + b"bigdata".ljust(32, b"\0") * 2
    + b"\0" * 16 + b"\0" * 155 + b"\0" * 12)  # no device numbers (a regular file), no prefix
_USTAR_SUM = sum(_USTAR_MID) + sum(_USTAR_MTIME) + sum(b" " * 8) + sum(_USTAR_TAIL)  # less name and size
_PAD = b"\0" * BLOCK


def sample_keys_between(f: BinaryIO, start: int, end: int | None) -> list[str]:
    """The keys of the samples whose first member header lies in [start, end) of a tar (end None:
    to the end of the archive), in order; headers only, no data is read. Non-file members (a
    directory, a link) start no sample."""
    f.seek(start)
    heads = _Headers(f)
    keys: list[str] = []
    while (end is None or heads.offset < end) and (h := heads.next()) is not None:
        name, isfile, _, _ = h
        parts = _split(name) if isfile else None
        if parts is not None and (not keys or keys[-1] != parts[0]):
            keys.append(parts[0])
    return keys


def member_blocks(name: str, data: bytes) -> bytes:
    """A new member's header, data and padding: the bytes `tarfile` writes for it in pax format,
    with a fixed mtime, mode and owner. A short ASCII name is one ustar header, built here;
    anything longer or wider goes through tarfile (a pax header first)."""
    n = len(data)
    raw = name.encode(ENCODING, "surrogateescape")
    if len(raw) <= 100 and raw.isascii() and n < 8 ** 11:
        size = b"%011o\0" % n
        chk = b"%06o\0 " % (_USTAR_SUM + sum(raw) + sum(size))
        return b"".join((raw, _PAD[: 100 - len(raw)], _USTAR_MID, size, _USTAR_MTIME, chk, _USTAR_TAIL,
                         data, _PAD[: -n % BLOCK]))
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = n, MTIME, 0o444
    info.uname = info.gname = "bigdata"
    return info.tobuf(tarfile.PAX_FORMAT, ENCODING, "surrogateescape") + data + _PAD[: -n % BLOCK]


def members_blocks(names, datas):
    """`member_blocks` for many members at once, byte for byte the same, as an Arrow binary array:
    `names` an Arrow string array, `datas` a binary one (a null gives a null). Headers of short
    ASCII names are built as one numpy array (name, size and checksum as columns); other names
    go one by one."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    raw = names.cast(pa.binary())
    datas = datas.cast(pa.binary())
    nlen = pc.binary_length(raw).to_numpy(zero_copy_only=False)
    dlen = pc.binary_length(datas).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = datas.is_valid().to_numpy(zero_copy_only=False)
    plain = (nlen <= 100) & (dlen < 8 ** 11) & pc.string_is_ascii(names).to_numpy(zero_copy_only=False) & valid
    where = np.flatnonzero(plain)
    m = len(where)
    blocks = pa.array([], pa.binary())
    if m:
        pick = pa.array(where)
        # each name NUL-padded to 100 bytes by Arrow, then the header fields as numpy columns
        padded = pc.binary_join_element_wise(raw.take(pick), _PADS().take(pa.array(100 - nlen[where])), b"")
        name = np.frombuffer(padded.buffers()[2], np.uint8)[: 100 * m].reshape(m, 100)
        head = np.tile(np.frombuffer(_HEAD, np.uint8), (m, 1))
        head[:, :100] = name
        size = dlen[where]
        digits = ((size[:, None] >> (3 * np.arange(10, -1, -1))) & 7) + 48
        head[:, 124:135] = digits
        chk = _USTAR_SUM + name.sum(axis=1, dtype=np.int64) + digits.sum(axis=1)
        head[:, 148:154] = ((chk[:, None] >> (3 * np.arange(5, -1, -1))) & 7) + 48
        headers = pa.FixedSizeBinaryArray.from_buffers(pa.binary(BLOCK), m, [None, pa.py_buffer(head.tobytes())])
        pads = _PADS().take(pa.array(-size % BLOCK))
        blocks = pc.binary_join_element_wise(headers.cast(pa.binary()), datas.take(pick), pads, b"")
        if m == len(names):
            return blocks
    out: list = [None] * len(names)
    for k, b in zip(where.tolist(), blocks.to_pylist()):
        out[k] = b
    for k in np.flatnonzero(~plain & valid).tolist():
        out[k] = member_blocks(names[k].as_py(), datas[k].as_py())
    return pa.array(out, pa.binary())


def views(arr) -> tuple[memoryview, list[int]]:
    """An Arrow binary array's values as (one memoryview of its data, offsets): value k is
    `view[offsets[k]:offsets[k + 1]]`, a slice without a copy."""
    import numpy as np

    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int32)[arr.offset : arr.offset + len(arr) + 1].tolist()
    return memoryview(bufs[2] if bufs[2] is not None else b""), offsets


# a header with the fixed fields; name, size and checksum are filled in per member
_HEAD = b"\0" * 100 + _USTAR_MID + b"\0" * 12 + _USTAR_MTIME + b"\0\0\0\0\0\0\0 " + _USTAR_TAIL
_PAD_ARRAY = []


def _PADS():
    """Zero padding of every length a member may need (0 to 511 bytes), as an Arrow array."""
    if not _PAD_ARRAY:
        import pyarrow as pa

        _PAD_ARRAY.append(pa.array([_PAD[:k] for k in range(BLOCK)], pa.binary()))
    return _PAD_ARRAY[0]


def _fd(f) -> int | None:
    """The OS file descriptor behind a local file object, if there is one."""
    try:
        return f.fileno()
    except (AttributeError, OSError, ValueError, NotImplementedError):
        return None


FLUSH = 8 << 20  # bytes gathered before one write
IOV_MAX = 1024  # pieces a writev may take
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.ETXTBSY}


def copy_range(src: int, dst: int, offset: int, n: int) -> None:
    """Append `n` bytes of file `src` from `offset` to `dst` at its position: in the kernel
    (`copy_file_range`) where the files allow it, else read and written in 8 MB pieces."""
    while n > 0 and hasattr(os, "copy_file_range"):
        try:
            done = os.copy_file_range(src, dst, n, offset)
        except OSError as e:
            if e.errno not in _NO_KERNEL_COPY:
                raise
            break  # this pair of files cannot: copy the rest through memory
        if done == 0:
            raise OSError(errno.EIO, f"source ended {n} bytes early (at byte {offset})")
        offset, n = offset + done, n - done
    while n > 0:
        data = os.pread(src, min(n, FLUSH), offset)
        if not data:
            raise OSError(errno.EIO, f"source ended {n} bytes early (at byte {offset})")
        _writev(dst, [data])
        offset, n = offset + len(data), n - len(data)


def _writev(fd: int, pieces: list) -> None:
    for i in range(0, len(pieces), IOV_MAX):
        chunk = pieces[i : i + IOV_MAX]
        left = sum(len(p) for p in chunk)
        while left:  # a short writev: write the rest
            done = os.writev(fd, chunk)
            left -= done
            while done and chunk:
                if done >= len(chunk[0]):
                    done -= len(chunk[0])
                    chunk = chunk[1:]
                else:
                    chunk = [memoryview(chunk[0])[done:], *chunk[1:]]
                    done = 0


class BlockWriter:
    """Append members to a tar: raw blocks, members read by `iter_samples` (unchanged), and new
    members; `close` ends the archive as tarfile does (two zero blocks, then zeros up to a whole
    10240-byte record). Pieces are gathered and written 8 MB at a time; to an OS file by a
    thread of its own, so the writing overlaps the reading and parsing (a context manager: the
    thread stops however the block ends)."""

    def __init__(self, f: BinaryIO):
        self.f, self.n = f, 0
        self.fd = _fd(f)
        self.pending: list[bytes] = []
        self.pending_n = 0
        self._q: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> "BlockWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop()

    def raw(self, blocks: bytes) -> None:
        """Write a member's raw blocks (headers, data, padding) as they were read."""
        self.pending.append(blocks)
        self.n += len(blocks)
        self.pending_n += len(blocks)
        if self.pending_n >= FLUSH:
            self._flush()

    def add(self, name: str, data: bytes) -> None:
        """Write a new member with recaption's fixed header fields."""
        self.raw(member_blocks(name, data))

    def extend(self, pieces: list, n: int) -> None:
        """Write many pieces at once (`n` bytes in all): buffers, as `raw` takes them, and
        (fd, offset, length) spans of local files, as `span` takes them."""
        if self.fd is None and any(isinstance(p, tuple) for p in pieces):
            raise ValueError("kernel copies need an OS file to write to")
        self.pending.extend(pieces)
        self.n += n
        self.pending_n += n
        if self.pending_n >= FLUSH:
            self._flush()

    @property
    def kernel_copies(self) -> bool:
        """Whether `span` may be used: the tar goes to an OS file."""
        return self.fd is not None

    def span(self, fd: int, offset: int, n: int) -> None:
        """Write `n` bytes of the local file `fd` from `offset`, copied in the kernel where it can
        (`copy_range`); `fd` must stay open until `close` returns."""
        if self.fd is None:
            raise ValueError("kernel copies need an OS file to write to")
        self.pending.append((fd, offset, n))
        self.n += n
        self.pending_n += n
        if self.pending_n >= FLUSH:
            self._flush()

    def member(self, m: RawMember) -> None:
        """Write one member of an output sample: raw blocks or a new member."""
        self.raw(m.head)
        self.raw(m.body)

    def flush(self, then: Callable[[], None] | None = None) -> None:
        """Hand what is gathered to the writer now; `then()` runs once it is written (or has
        failed), so that a caller can reuse the buffers its pieces point into."""
        self._flush(then)

    def _flush(self, then: Callable[[], None] | None = None) -> None:
        pieces, self.pending, self.pending_n = self.pending, [], 0
        if self.fd is None:
            try:
                for i in range(0, len(pieces), IOV_MAX):
                    self.f.write(b"".join(pieces[i : i + IOV_MAX]))
            finally:
                if then is not None:
                    then()
            return
        if self._thread is None:
            self._q = queue.Queue(maxsize=2)  # at most two batches waiting: memory stays bounded
            self._thread = threading.Thread(target=self._write_batches, daemon=True)
            self._thread.start()
        self._check()
        self._q.put((pieces, then))

    def _write_batches(self) -> None:
        while (item := self._q.get()) is not None:
            pieces, then = item
            if self._error is None:
                try:
                    self._write(pieces)
                except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                    self._error = e
            if then is not None:
                then()

    def _write(self, pieces: list) -> None:
        run = 0  # pieces from here on are buffers, until a span
        for i, p in enumerate(pieces):
            if isinstance(p, tuple):
                _writev(self.fd, pieces[run:i])
                copy_range(p[0], self.fd, p[1], p[2])
                run = i + 1
        _writev(self.fd, pieces[run:] if run else pieces)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Write the end-of-archive blocks and flush."""
        end = self.n + 2 * BLOCK
        self.raw(b"\0" * (2 * BLOCK + (-end % RECORD)))
        self._flush()
        self._stop()
        self._check()
