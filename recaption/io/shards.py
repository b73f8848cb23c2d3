"""Stream samples out of WebDataset tar shards, turning every failure into a record.

A sample is the run of consecutive tar members sharing a key (docs/formats.md#shard-layout). Nothing
is loaded whole: members are read one at a time from a streaming tarfile over an fsspec file
object; gzipped shards (`.tar.gz`, `.tgz`) are decompressed on the fly, never unpacked to disk.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import posixpath
import re
import sys
import zlib
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from recaption.errors import RecaptionError
from recaption.io import tarindex
from recaption.io.fs import describe_remote_error, open_url
from recaption.io.sources import is_gzip_name, shard_name

DEFAULT_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
# What one sample may cost to read (docs/formats.md#read-limits); each is an option of every verb
# that reads shards.
DEFAULT_MAX_MEMBER_BYTES = 256 << 20
DEFAULT_MAX_JSON_BYTES = 4 << 20
DEFAULT_MAX_JSON_DEPTH = 100
DEFAULT_MAX_JSON_INT_DIGITS = 4300  # Python's own default int-from-text limit
JSON_DEPTH_CEILING = 500  # deeper than this, the json module's recursion would not be ours to bound


@dataclass
class Sample:
    """One sample read whole from a shard: its members, image field, raw caption and json."""
    key: str
    shard: str
    members: dict[str, bytes]  # field -> bytes, in tar order
    image_field: str | None = None
    raw_caption: str | None = None
    meta: dict | None = None
    index: int = 0  # position in its shard
    tar_index: dict | None = None  # where its members lie in the tar (`recaption.io.tarindex`)

    @property
    def image_bytes(self) -> bytes:
        """The bytes of the sample's image member."""
        return self.members[self.image_field]

    def index_fields(self) -> dict:
        """The sample's member index as annotation columns (null where there is none)."""
        return dict(self.tar_index) if self.tar_index else tarindex.no_index()

    def digest_fields(self) -> dict:
        """The sha256 of its txt and json as annotation columns (`tarindex.DIGESTS`; null where absent)."""
        return tarindex.digests(self.members)


@dataclass
class ReadFailure:
    """A sample (key set) or a whole shard (key None) that could not be read."""

    key: str | None
    shard: str
    reason: str
    index: int = -1


def split_member(name: str) -> tuple[str, str] | None:
    """`dir/000001.syn.txt` -> (`dir/000001`, `syn.txt`); None for names with no field."""
    dirname, base = posixpath.split(name)
    if "." not in base:
        return None
    stem, fld = base.split(".", 1)
    return (posixpath.join(dirname, stem) if dirname else stem), fld


def unsafe_name(name: str) -> str | None:
    """Why a member name must not be used (it could escape a folder when extracted)."""
    if name.startswith("/") or name.startswith("\\"):
        return "absolute member path"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "member path contains '..'"
    if any(ord(c) < 32 for c in name):
        return "control character in member name"
    if len(name) > 2 and name[1] == ":":
        return "drive letter in member name"
    return None


@dataclass(frozen=True)
class ReadLimits:
    """What one sample may cost to read: a member's size, its json's size, nesting and integers.
    Going over one makes that sample an error row; the shard goes on."""

    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_json_int_digits: int = DEFAULT_MAX_JSON_INT_DIGITS

    def checked(self) -> "ReadLimits":
        """These limits, or a RecaptionError naming the option out of range."""
        for name in ("max_member_bytes", "max_json_bytes", "max_json_depth", "max_json_int_digits"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise RecaptionError(f"{_flag(name)} must be a whole number of at least 1, got {v!r}")
        if self.max_json_depth > JSON_DEPTH_CEILING:
            raise RecaptionError(f"{_flag('max_json_depth')} is at most {JSON_DEPTH_CEILING} (Python's json "
                                 f"parser recurses per level), got {self.max_json_depth}")
        ceiling = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
        if ceiling and self.max_json_int_digits > ceiling:
            raise RecaptionError(f"{_flag('max_json_int_digits')} is at most {ceiling} (this Python's "
                                 f"int-from-text limit), got {self.max_json_int_digits}")
        return self


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class ReadOptions:
    """Which image fields count, whether a sample needs one, and what a sample may cost to read."""
    image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS
    require_image: bool = True
    limits: ReadLimits = field(default_factory=ReadLimits)


@dataclass
class _Group:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    problem: str | None = None
    spans: tarindex.Recorder | None = None  # None: the shard's offsets are not file offsets


def _finish(group: _Group, shard: str, index: int, opts: ReadOptions) -> Sample | ReadFailure:
    try:
        return _parse(group, shard, index, opts)
    except Exception as e:  # whatever one sample's bytes do to a parser, the shard goes on
        return ReadFailure(group.key, shard, f"read: cannot parse sample ({type(e).__name__}: {e})", index)


class _TooBig(ValueError):
    pass


def _int_hook(limit: int):
    def parse(text: str) -> int:
        digits = len(text) - text.startswith("-")
        if digits > limit:
            raise _TooBig(f"json holds an integer of {digits} digits, over the limit of {limit} "
                          f"(--max-json-int-digits)")
        return int(text)

    return parse


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(data: bytes) -> int:
    """How deeply a json text nests arrays and objects (brackets inside strings not counted)."""
    import numpy as np

    bare = _STRINGS.sub(b"", data)
    a = np.frombuffer(bare, dtype=np.uint8)
    step = np.zeros(256, dtype=np.int64)
    step[[ord("["), ord("{")]] = 1
    step[[ord("]"), ord("}")]] = -1
    depth = np.cumsum(step[a])
    return int(depth.max(initial=0))


def parse_json(data: bytes, limits: ReadLimits):
    """A sample's json text parsed within `limits`; ValueError with the reason otherwise."""
    # Counting brackets is C-speed and bounds the depth from above: most texts need no more.
    if data.count(b"[") + data.count(b"{") > limits.max_json_depth:
        depth = json_depth(data)
        if depth > limits.max_json_depth:
            raise _TooBig(f"json nests {depth} levels deep, over the limit of {limits.max_json_depth} "
                          "(--max-json-depth)")
    try:
        return json.loads(data.decode("utf-8"), parse_int=_int_hook(limits.max_json_int_digits))
    except RecursionError:
        raise _TooBig("json nests deeper than the parser can follow") from None


def _parse(group: _Group, shard: str, index: int, opts: ReadOptions) -> Sample | ReadFailure:
    if group.problem:
        return ReadFailure(group.key, shard, f"read: {group.problem}", index)
    m = group.members
    img = next((k for k in opts.image_keys if k in m), None)
    if img is None and opts.require_image:
        return ReadFailure(
            group.key, shard, f"read: no image member (looked for {', '.join(opts.image_keys)})", index
        )
    if img is not None and len(m[img]) == 0:
        return ReadFailure(group.key, shard, f"read: image member .{img} is empty", index)
    raw = None
    if "txt" in m:
        try:
            raw = m["txt"].decode("utf-8")
        except UnicodeDecodeError as e:
            return ReadFailure(group.key, shard, f"read: txt is not UTF-8 ({e.reason} at byte {e.start})", index)
        if not raw.strip():
            raw = None  # an empty alt-text is no alt-text: scores and strategies treat it as missing
    meta = None
    if "json" in m:
        try:
            meta = parse_json(m["json"], opts.limits)
        except _TooBig as e:
            return ReadFailure(group.key, shard, f"read: {e}", index)
        except (UnicodeDecodeError, ValueError) as e:
            return ReadFailure(group.key, shard, f"read: invalid json ({e})", index)
        if not isinstance(meta, dict):
            return ReadFailure(group.key, shard, f"read: json is a {type(meta).__name__}, not an object", index)
    return Sample(group.key, shard, m, img, raw, meta, index, group.spans and group.spans.fields())


class EndNotingInfo(tarfile.TarInfo):
    """tarfile's member header, noting why the archive ended: tarfile stops quietly at a missing
    or broken header, which is how a cut-off shard would pass for a whole one."""

    @classmethod
    def fromtarfile(cls, tar):
        """Read one header, remembering the header error that ended the archive, if any."""
        tar.recaption_end = None
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar.recaption_end = e
            raise


def end_problem(tar) -> str | None:
    """Why an archive tarfile read to its end is not whole (None: it ends with a zero block)."""
    e = getattr(tar, "recaption_end", None)
    if isinstance(e, tarfile.EOFHeaderError):
        return None
    if isinstance(e, tarfile.EmptyHeaderError):
        return "the data ends after a member, without the tar's end-of-archive blocks"
    if isinstance(e, tarfile.TruncatedHeaderError):
        return "the data ends inside a member header"
    if e is not None:
        return f"a member header is corrupt ({e})"
    return "the archive ends without its end-of-archive blocks"


def _read_member(tar, info, limit: int) -> bytes:
    """A member's bytes, read only when its header's size is within `limit`: the header's size is
    exactly what tarfile reads, gzipped or not, so an inflating member is stopped before any of
    it is read, and the reader then skips it in tarfile's own small blocks."""
    f = tar.extractfile(info)
    data = f.read(info.size)
    if len(data) != info.size:
        raise EOFError(f"member {info.name!r} holds {len(data)} of its {info.size} bytes")
    return data


def iter_shard(url: str, opts: ReadOptions | None = None) -> Iterator[Sample | ReadFailure]:
    """Yield a Sample or ReadFailure per sample, then a shard ReadFailure if the tar breaks (or
    ends without its end-of-archive blocks: a shard cut off between members)."""
    opts = opts or ReadOptions()
    lim = opts.limits
    shard = shard_name(url)
    seen: set[str] = set()
    index = 0
    group: _Group | None = None
    opened = False
    try:
        with open_url(url, "rb") as raw, _decompressed(url, raw) as f:
            opened = True
            # "r|*" also reads a compressed tar whose name does not say so
            with tarfile.open(fileobj=f, mode="r|*", tarinfo=EndNotingInfo) as tar:
                # offsets index the file only when tarfile reads it as it is (not decompressed)
                plain = f is raw and getattr(tar.fileobj, "comptype", None) == "tar"
                end = 0  # where the member read last ends: the next one's header blocks start there
                for info in tar:
                    start, end = end, tar.offset
                    if not info.isfile():
                        continue
                    name = info.name
                    parts = split_member(name)
                    if parts is None:
                        continue  # e.g. a README member: not part of any sample
                    key, fld = parts
                    if group is None or key != group.key:
                        if group is not None:
                            yield _finish(group, shard, index, opts)
                            index += 1
                        group = _Group(key, spans=tarindex.Recorder(start) if plain else None)
                        if key in seen:
                            group.problem = "duplicate key in shard (members not contiguous or repeated)"
                        seen.add(key)
                    why = unsafe_name(name)
                    if why:
                        group.problem = f"{why}: {name!r}"
                    if group.spans is not None:
                        group.spans.add(fld, start, end, info.offset_data, info.size, info.issparse())
                    if fld in group.members and not group.problem:
                        group.problem = f"field .{fld} appears twice"
                    limit, flag = ((lim.max_json_bytes, "--max-json-bytes") if fld == "json"
                                   else (lim.max_member_bytes, "--max-member-bytes"))
                    if info.size > limit:
                        if not group.problem:
                            group.problem = f"member .{fld} is {info.size} bytes, over the limit of {limit} ({flag})"
                        group.members[fld] = b""
                        continue
                    group.members[fld] = _read_member(tar, info, limit)
                cut = end_problem(tar)
        if cut is not None:
            if group is not None and group.members:  # its later members may be what was cut
                yield ReadFailure(group.key, shard, f"read: sample may be cut off ({cut})", index)
            yield ReadFailure(None, shard, f"read: truncated tar ({cut})")
        elif group is not None:
            yield _finish(group, shard, index, opts)
        else:
            yield ReadFailure(None, shard, "read: shard holds no samples (empty tar)")
    except Exception as e:  # a shard that breaks keeps what was read before; the others go on
        # Samples fully read before the break were yielded; the open one is incomplete.
        remote = describe_remote_error(e, url)
        detail = remote or f"{type(e).__name__}: {e}"
        if group is not None and group.members:
            yield ReadFailure(group.key, shard, f"read: sample cut off by shard error ({detail})", index)
        if remote:
            what = "transfer failed" if opened else "cannot open shard"
        elif isinstance(e, (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)):
            what = "not a tar file" if index == 0 and group is None else "truncated or corrupt tar"
        else:
            what = "shard read failed"
        yield ReadFailure(None, shard, f"read: {what} ({detail})")


def _decompressed(url: str, raw):
    """gzip's own reader for `.tar.gz`/`.tgz`: it checks the CRC and reads concatenated members,
    which tarfile's built-in stream decompression does not."""
    return gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip_name(url) else contextlib.nullcontext(raw)


def iter_shards(urls: list[str], opts: ReadOptions | None = None) -> Iterator[Sample | ReadFailure]:
    """`iter_shard` over several shards in turn."""
    for u in urls:
        yield from iter_shard(u, opts)


@contextlib.contextmanager
def open_shard(url: str):
    """A shard opened for reading as a binary stream, decompressed when it is gzipped (by name,
    or by its first bytes, as `iter_shard` reads it); a plain local one with an 8 MB buffer, so
    that members are served from memory, not a system call each."""
    from recaption.io.atomic import local_path

    path = local_path(url)
    with (open(path, "rb", buffering=8 << 20) if path is not None else open_url(url, "rb")) as raw:
        head = raw.read(2)
        raw.seek(0)
        if is_gzip_name(url) or head == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield f
        else:
            yield raw
