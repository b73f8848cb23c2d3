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
import zlib
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from recaption.io import tarindex
from recaption.io.fs import open_url
from recaption.io.sources import is_gzip_name, shard_name

DEFAULT_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


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


@dataclass
class ReadOptions:
    """Which image fields count, and whether a sample needs one."""
    image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS
    require_image: bool = True


@dataclass
class _Group:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    problem: str | None = None
    spans: tarindex.Recorder | None = None  # None: the shard's offsets are not file offsets


def _finish(group: _Group, shard: str, index: int, opts: ReadOptions) -> Sample | ReadFailure:
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
            meta = json.loads(m["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return ReadFailure(group.key, shard, f"read: invalid json ({e})", index)
        if not isinstance(meta, dict):
            return ReadFailure(group.key, shard, f"read: json is a {type(meta).__name__}, not an object", index)
    return Sample(group.key, shard, m, img, raw, meta, index, group.spans and group.spans.fields())


def iter_shard(url: str, opts: ReadOptions | None = None) -> Iterator[Sample | ReadFailure]:
    """Yield a Sample or ReadFailure per sample, then a shard ReadFailure if the tar breaks."""
    opts = opts or ReadOptions()
    shard = shard_name(url)
    seen: set[str] = set()
    index = 0
    group: _Group | None = None
    try:
        with open_url(url, "rb") as raw, _decompressed(url, raw) as f:
            # "r|*" also reads a compressed tar whose name does not say so
            with tarfile.open(fileobj=f, mode="r|*") as tar:
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
                    data = tar.extractfile(info).read()
                    if fld in group.members and not group.problem:
                        group.problem = f"field .{fld} appears twice"
                    group.members[fld] = data
        if group is not None:
            yield _finish(group, shard, index, opts)
        else:
            yield ReadFailure(None, shard, "read: shard holds no samples (empty tar)")
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as e:
        # Samples fully read before the break were yielded; the open one is incomplete.
        if group is not None and group.members:
            yield ReadFailure(group.key, shard, f"read: sample cut off by shard error ({e})", index)
        what = "not a tar file" if index == 0 and group is None else "truncated or corrupt tar"
        yield ReadFailure(None, shard, f"read: {what} ({type(e).__name__}: {e})")


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
