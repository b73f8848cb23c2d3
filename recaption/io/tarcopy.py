"""Copy tar members as raw blocks: read a shard's members without unpacking them, write them back
byte for byte, and add new members with fixed headers.

Python's own `tarfile` parses every header (ustar, GNU long names, pax records, sparse maps,
global headers), so a member is read exactly as `iter_shard` reads it; the member's raw blocks
(its extended headers, its header, its data and padding) are then copied unchanged, and the data
of members nobody wants is skipped with a seek, never read.
"""
from __future__ import annotations

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
    """One member: `raw` holds every block of it (headers, data, padding); `data` its content."""
    name: str
    field: str
    raw: bytes
    data_at: int
    size: int

    @property
    def data(self) -> bytes:
        return self.raw[self.data_at : self.data_at + self.size]


class _Headers:
    """Reads one member's header chain at a time. Plain members (a ustar regular-file header with
    a valid checksum and a short name, the kind every WebDataset writer makes) are parsed here;
    anything else goes to `tarfile.TarInfo.fromtarfile`, with this object standing in for the
    TarFile (the attributes that method reads)."""

    def __init__(self, f: BinaryIO):
        self.f, self.fileobj = f, _Tape(f)
        self.encoding, self.errors = ENCODING, "surrogateescape"
        self.pax_headers: dict = {}  # global pax headers, kept by tarfile across members
        self.offset = f.tell()  # where the next header starts (tarfile keeps it up to date)

    def next(self) -> tuple[str, bool, int, bytes] | None:
        """(name, is a regular file, data size, raw header blocks), positioned at the data; or
        None at the end of the archive."""
        f, at = self.f, self.offset
        if f.tell() != at:
            f.seek(at)
        buf = f.read(BLOCK)
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
        size = self.offset - info.offset_data if not info.isreg() or info.issparse() else info.size
        return info.name, info.isfile(), size, head


def _plain(buf: bytes) -> tuple[str, int] | None:
    if len(buf) != BLOCK or buf[156:157] not in (b"0", b"\0") or buf[257:262] != b"ustar" \
            or buf[124] & 0x80 or buf[345] != 0:
        return None
    try:
        chk = int(buf[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        size = int(buf[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    if chk != sum(buf) - sum(buf[148:156]) + 256:
        return None
    name = buf[:100].split(b"\0", 1)[0].decode(ENCODING, "surrogateescape")
    if name.endswith("/"):
        return None  # a directory in the old style: tarfile decides
    return name, size


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
        parts = split_member(name) if isfile else None
        take = False
        if parts is not None:
            k, fld = parts
            if k != key:
                if cur is not None:
                    yield pos, key, cur
                pos, key = pos + 1, k
                if pos > last:
                    return
                cur = [] if pos in wanted else None
            take = cur is not None
        if take:
            n = heads.offset - f.tell()
            body = f.read(n)
            if len(body) != n:
                raise tarfile.ReadError(f"unexpected end of data in member {name!r}")
            cur.append(RawMember(name, fld, head + body, len(head), size))
    if cur is not None:
        yield pos, key, cur


def member_blocks(name: str, data: bytes) -> bytes:
    """A new member's header (pax where the name needs it), data and padding: the bytes
    `tarfile` writes for it, with a fixed mtime, mode and owner."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, 0o444
    info.uname = info.gname = "bigdata"
    head = info.tobuf(tarfile.PAX_FORMAT, ENCODING, "surrogateescape")
    return head + data + b"\0" * (_padded(len(data)) - len(data))


class BlockWriter:
    """Append raw member blocks and new members to a file; `close` ends the archive as tarfile
    does (two zero blocks, then zeros up to a whole 10240-byte record)."""

    def __init__(self, f: BinaryIO):
        self.f, self.n = f, 0

    def raw(self, blocks: bytes) -> None:
        self.f.write(blocks)
        self.n += len(blocks)

    def add(self, name: str, data: bytes) -> None:
        self.raw(member_blocks(name, data))

    def close(self) -> None:
        end = self.n + 2 * BLOCK
        self.raw(b"\0" * (2 * BLOCK + (-end % RECORD)))
