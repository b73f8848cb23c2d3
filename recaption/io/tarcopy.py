"""Copy tar members as raw blocks: read a shard's members without unpacking them, write them back
byte for byte, and add new members with fixed headers.

Plain headers (what every WebDataset writer makes) are parsed here; Python's own `tarfile` parses
every other kind (GNU long names, pax records, sparse maps, global headers), so a member is read
exactly as `iter_shard` reads it. A member's raw blocks (extended headers, header, data, padding)
are then copied unchanged: between local files with `os.copy_file_range` (in the kernel, as `cp`
does), else read and written. The data of members nobody wants is skipped with a seek.
"""
from __future__ import annotations

import errno
import os
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from recaption.io.shards import split_member

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
MTIME = 0  # fixed, so a resumed run writes byte-identical tars
ENCODING = "utf-8"


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


class _Tape:
    """A file wrapper that remembers the header bytes tarfile reads, so they can be copied."""

    def __init__(self, f: BinaryIO):
        self.f, self.rec = f, bytearray()

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.rec += b
        return b

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def tell(self) -> int:
        return self.f.tell()

    def take(self) -> bytes:
        b, self.rec = bytes(self.rec), bytearray()
        return b


@dataclass
class RawMember:
    """One member: its header blocks, where its data lies in `src`, and that data (with padding)
    when it was read; the writer copies what was not."""
    name: str
    field: str
    head: bytes
    at: int  # offset of the data in src
    size: int  # content bytes
    span: int  # data and padding: up to the next header
    body: bytes | None = None
    src: BinaryIO | None = None

    @property
    def data(self) -> bytes:
        if self.body is None:  # read it now, leaving the source where the reader left it
            here = self.src.tell()
            self.src.seek(self.at)
            self.body = self.src.read(self.span)
            self.src.seek(here)
            if len(self.body) != self.span:
                raise tarfile.ReadError(f"unexpected end of data in member {self.name!r}")
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
        f.seek(at)
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


def iter_samples(f: BinaryIO, wanted: set[int], read: frozenset | None = None
                 ) -> Iterator[tuple[int, str, list[RawMember]]]:
    """(position, key, members) of the samples at `wanted` positions, grouped and numbered as
    `iter_shard` does (consecutive file members sharing a key); stops after the last one. The
    data of fields in `read` (every field when None) is read; the rest stays where it is."""
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
        at, span = heads.pos, heads.offset - heads.pos
        m = RawMember(name, fld, head, at, size, span, src=f)
        if read is None or fld in read:
            m.body = f.read(span)
            heads.pos += len(m.body)
            if len(m.body) != span:
                raise tarfile.ReadError(f"unexpected end of data in member {name!r}")
        cur.append(m)
    if cur is not None:
        yield pos, key, cur


_USTAR_TAIL = (  # after name, mode, uid, gid, size, mtime: tarfile's bytes for our fixed fields
    b"        0" + b"\0" * 100 + tarfile.POSIX_MAGIC + b"bigdata".ljust(32, b"\0") * 2
    + b"\0" * 16 + b"\0" * 155 + b"\0" * 12)  # no device numbers (a regular file), no prefix
_USTAR_MID = b"0000444\0" + b"0000000\0" * 2  # mode 0o444, uid 0, gid 0
_USTAR_SUM = sum(_USTAR_MID) + sum(b"%011o\0" % MTIME) + sum(_USTAR_TAIL)  # the checksum, less name and size


def member_blocks(name: str, data: bytes) -> bytes:
    """A new member's header, data and padding: the bytes `tarfile` writes for it in pax format,
    with a fixed mtime, mode and owner. A short ASCII name is one ustar header, built here;
    anything longer or wider goes through tarfile (a pax header first)."""
    n = len(data)
    raw = name.encode(ENCODING, "surrogateescape")
    if len(raw) <= 100 and raw.isascii() and n < 8 ** 11:
        size = b"%011o\0" % n
        head = (raw.ljust(100, b"\0") + _USTAR_MID + size + b"%011o\0" % MTIME
                + b"%06o\0 " % (_USTAR_SUM + sum(raw) + sum(size)) + _USTAR_TAIL[8:])
    else:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = n, MTIME, 0o444
        info.uname = info.gname = "bigdata"
        head = info.tobuf(tarfile.PAX_FORMAT, ENCODING, "surrogateescape")
    return head + data + b"\0" * (-n % BLOCK)


def _fd(f) -> int | None:
    """The OS file descriptor behind a local file object, if there is one."""
    try:
        return f.fileno()
    except (AttributeError, OSError, ValueError, NotImplementedError):
        return None


class BlockWriter:
    """Append members to a tar: raw blocks, members copied from another tar, and new members;
    `close` ends the archive as tarfile does (two zero blocks, then zeros up to a whole
    10240-byte record). Between two local files the data is copied in the kernel."""

    def __init__(self, f: BinaryIO):
        self.f, self.n = f, 0
        self.fd = _fd(f)
        self.kernel_copy = self.fd is not None and hasattr(os, "copy_file_range")
        self.pending: list[bytes] = []  # small pieces, written together

    def raw(self, blocks: bytes) -> None:
        self.pending.append(blocks)
        self.n += len(blocks)
        if len(blocks) > 1 << 16:
            self._flush()

    def add(self, name: str, data: bytes) -> None:
        self.raw(member_blocks(name, data))

    def member(self, m: RawMember) -> None:
        """A member read by `iter_samples`, unchanged."""
        self.raw(m.head)
        if m.body is not None:
            self.raw(m.body)
            return
        src = _fd(m.src) if self.kernel_copy else None
        if src is not None and self._copy(src, m.at, m.span):
            self.n += m.span
            return
        m.data  # noqa: B018 - reads the body
        self.raw(m.body)

    def _copy(self, src: int, at: int, n: int) -> bool:
        self._flush()
        done = 0
        try:
            while done < n:
                k = os.copy_file_range(src, self.fd, n - done, at + done)
                if k == 0:
                    raise tarfile.ReadError("unexpected end of data")
                done += k
        except OSError as e:
            if done or e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                raise
            self.kernel_copy = False  # not between these files: read and write instead
            return False
        return True

    def _flush(self) -> None:
        if not self.pending:
            return
        data = b"".join(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending = []
        if self.fd is None:
            self.f.write(data)
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        end = self.n + 2 * BLOCK
        self.raw(b"\0" * (2 * BLOCK + (-end % RECORD)))
        self._flush()
