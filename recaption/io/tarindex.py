"""A shard's member index: where each sample's members lie in its tar, recorded when the shard is
first read, so that the mix writer copies byte spans instead of walking tar headers.

Per sample (one annotation row) it holds, as byte offsets from the start of the tar file: the span
of the sample's run of members, and the span of each member a mix may replace (`txt`, `json`,
`syn.txt`), each member counted from the first of its header blocks (pax and GNU extended headers
included) to the end of its padding, exactly the bytes a raw copy of it writes; and where the
json's data starts and how long it is, so its text is read without parsing a header. The index is
left out (null) where offsets would not be file offsets (a compressed shard), where a sample's
members are not one unbroken run (another member lies between them), and for a sparse json.

The annotation file records the shard's identity as the index saw it (size, mtime, ETag, the
`tarindex` entry of its column groups); the plan carries the index into the decisions files only
where that identity is still the shard's, and the writer checks it again before copying.
"""
from __future__ import annotations

GROUP = "tarindex"  # the entry of an annotation file's recorded groups: the indexed shard's identity
# (column, type): every index column, declared here only (annotation and decisions files append them)
COLUMNS = (
    ("tar_offset", "int64"),  # the sample's run of members: first header block
    ("tar_size", "int64"),  # ... to the end of its last member's padding
    ("tar_txt_offset", "int64"), ("tar_txt_size", "int64"),  # each replaceable member, headers to padding
    ("tar_json_offset", "int64"), ("tar_json_size", "int64"),
    ("tar_syn_offset", "int64"), ("tar_syn_size", "int64"),
    ("tar_json_data_offset", "int64"), ("tar_json_data_size", "int64"),  # the json text itself
)
NAMES = tuple(n for n, _ in COLUMNS)
# what the reader read of each sample's caption and json: the sha256 of the member's bytes (null: no
# such member), so a shard rewritten with the same keys and images but another txt or json is told
# from the one annotated (`recaption.mixing.provenance.first_difference`); recorded beside the index
DIGESTS = (("txt_sha256", "binary[32]"), ("json_sha256", "binary[32]"))
DIGEST_NAMES = tuple(n for n, _ in DIGESTS)
DIGESTED = {"txt": "txt_sha256", "json": "json_sha256"}  # member field -> its digest column
MEMBERS = {"txt": "tar_txt", "json": "tar_json", "syn.txt": "tar_syn"}  # field -> column prefix
_NONE = dict.fromkeys(NAMES)


class Recorder:
    """Collects one sample's member spans as a reader meets its members in tar order."""

    __slots__ = ("start", "end", "members", "broken")

    def __init__(self, start: int):
        self.start = self.end = start
        self.members: dict[str, tuple[int, int, int, int]] = {}
        self.broken = False

    def add(self, field: str, start: int, end: int, data_offset: int, size: int, sparse: bool = False) -> None:
        """One member of the sample: its span [start, end) and its data; members must follow each
        other without a gap (anything between them breaks the run: no index)."""
        if start != self.end or (sparse and field == "json"):
            self.broken = True
        self.end = end
        if field in MEMBERS:
            self.members[field] = (start, end - start, data_offset, size)

    def fields(self) -> dict:
        """The sample's index columns (all null when it has no usable index)."""
        if self.broken:
            return dict(_NONE)
        out = {"tar_offset": self.start, "tar_size": self.end - self.start}
        for field, prefix in MEMBERS.items():
            m = self.members.get(field)
            out[f"{prefix}_offset"], out[f"{prefix}_size"] = (m[0], m[1]) if m else (None, None)
        j = self.members.get("json")
        out["tar_json_data_offset"], out["tar_json_data_size"] = (j[2], j[3]) if j else (None, None)
        return out


def no_index() -> dict:
    """The index columns of a sample without an index."""
    return dict(_NONE)


def digests(members: dict) -> dict:
    """The digest columns of a sample from its members (field -> bytes): sha256, null where absent."""
    import hashlib

    return {col: None if members.get(field) is None else hashlib.sha256(members[field]).digest()
            for field, col in DIGESTED.items()}


def identity(url: str) -> dict:
    """The shard's size, mtime and ETag now, as `recaption.io.atomic.file_info` reports them."""
    from recaption.io.atomic import file_info

    return file_info(url)


NO_STAMP = "no mtime or ETag to compare"  # what `change` says where the size is all it could compare


def change(now: dict, recorded: dict) -> str | None:
    """How a shard differs from a recorded identity ("size 10, recorded 12"), or None when it is
    the same: the size, and the ETag or mtime wherever both sides have one (the overlay's rule)."""
    if now.get("size") != recorded.get("size"):
        return f"size {now.get('size')}, recorded {recorded.get('size')}"
    compared = False
    for k in ("etag", "mtime"):
        if recorded.get(k) is not None and now.get(k) is not None:
            if str(now[k]) != str(recorded[k]):
                return f"{k} {now[k]}, recorded {recorded[k]}"
            compared = True
    return None if compared else NO_STAMP


def carry(table, ann_path: str, shard_now: dict):
    """`table` (a shard's decisions, row for row with its annotation file) with the index columns
    appended, where the annotation file has an index of this shard as it is now (`shard_now`,
    its identity); else `table` unchanged."""
    import pyarrow as pa

    from recaption.io import annotations as ann

    with ann.open_parquet(ann_path) as pf:
        recorded = ((ann.metadata(pf.schema_arrow) or {}).get("groups") or {}).get(GROUP)
        if not recorded or change(shard_now, recorded) is not None or not set(NAMES) <= set(pf.schema_arrow.names):
            return table
        idx = pf.read(columns=list(NAMES), use_threads=False)
    if idx.num_rows != table.num_rows:
        return table
    for name, typ in COLUMNS:
        table = table.append_column(pa.field(name, pa.type_for_alias(typ)), idx[name].cast(typ))
    return table
