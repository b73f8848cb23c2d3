"""Apply a mix to samples as they are read from the input shards, from the decisions files an
overlay folder holds (`recaption mix --overlay`, or any mix's `_decisions/`), without the mixed tars.

A reader hands over samples as dicts keyed webdataset's way (`__url__`, `__key__`, one entry per
member). The first sample of a shard loads that shard's decisions file (the only one in memory,
with a few recent ones) and checks the shard against the identity the file recorded, before any
of its samples goes on. A kept sample gets exactly the members the mixed tar holds
(`output.members.kept_members`), a dropped one is left out, and one the decisions do not know is an
error: never kept silently. Samples already decoded (webdataset's `.decode()`) get what decoding
the mixed sample gives: `txt` and `syn.txt` as text, `json` as an object. Where asked, `txt`
takes a caption chosen among the sample's caption keys (`overlay.caption_choice`).
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recaption.errors import RecaptionError
from recaption.io import tarindex
from recaption.io.atomic import exists, file_info, join, read_text
from recaption.io.fs import open_url, using
from recaption.io.sources import shard_name
from recaption.mixing import provenance
from recaption.mixing.plan import META_KEY, VERSION, decisions_path, repeated_kept_key
from recaption.mixing.strategies.base import named
from recaption.output import caption_keys, recaption_field
from recaption.output.members import (READ, decoded_json, finite, kept_members, members, recaption_object,
                                      splice_recaption)
from recaption.overlay.caption_choice import CaptionChoice

VERIFY = ("full", "size")
_PROCESS_CACHES: dict[tuple, OrderedDict] = {}  # unpickled readers of one overlay, per process
_RECORDED: dict[tuple, dict] = {}  # per overlay, the decisions digests its summary records, per process
KINDS = ("overlay", "mix", "run")  # folders whose `_decisions/` a reader may apply
_AMBIGUOUS = -2
_DROPPED = -1
_PIPE_NAME = re.compile(r"([^\s/'\"]+?)(?:\.tar\.gz|\.tgz|\.tar)(?=[\s'\"?#;|]|$)")


def reader_shard_name(url: str) -> str:
    """The shard name a reader's URL stands for; `pipe:` commands by the last shard file they name."""
    if url.startswith("pipe:"):
        found = _PIPE_NAME.findall(url)
        if not found:
            raise RecaptionError(f"cannot tell which shard {url!r} reads (no NAME.tar in the command)")
        return found[-1]
    return shard_name(url)


def stat_target(url: str, recorded: str) -> str:
    """Where to ask for the shard's size and mtime: the URL read from, except where that cannot be
    asked (a `pipe:` command) or has lost its scheme (Ray's `bucket/key` paths): the recorded one."""
    if url.startswith("pipe:"):
        return recorded
    if "://" not in url and "://" in recorded and recorded.split("://", 1)[1].lstrip("/") == url.lstrip("/"):
        return recorded
    return url


def check_identity(url: str, meta: dict, verify: str = "full", key: str | None = None) -> None:
    """Refuse a shard that is not the one the decisions were made for: its size, and its mtime or
    ETag (what the store reports and the decisions recorded), must be the recorded ones. `key` is
    the first sample read from it, which the error names."""
    where = stat_target(url, meta.get("input") or url)
    at = f"{url}: sample {key!r}:" if key is not None else f"{url}:"
    try:
        now = file_info(where)
    except (OSError, ValueError) as e:
        raise RecaptionError(f"{at} cannot check the shard against its overlay decisions ({e})") from None
    redo = "re-annotate it and re-run the mix (with --overlay)"
    differs = tarindex.change(now, meta)  # the rule the mix writer checks shards by, too
    if differs is None:
        return
    if differs.startswith("size "):
        raise RecaptionError(f"{at} the shard changed since the overlay was made ({differs}); {redo}")
    if verify == "size":
        return
    if differs == tarindex.NO_STAMP:
        raise RecaptionError(f"{at} its store reports no mtime or ETag to compare with the overlay's record "
                             "(read it through the recorded URL, or pass verify='size' to compare sizes only)")
    raise RecaptionError(f"{at} the shard changed since the overlay was made ({differs}); {redo}, or pass "
                         "verify='size' if it is an unchanged copy")


class ShardDecisions:
    """One input shard's decisions as a reader uses them: key -> what the mix did with it."""

    def __init__(self, url: str, path: str, verify: str, key: str | None = None,
                 recorded: dict | None = None):
        try:
            with open_url(path, "rb") as f:
                data = f.read()  # once: hashed, then parsed from memory
        except FileNotFoundError:
            raise RecaptionError(f"{url}: sample {key!r}: the overlay has no decisions file for shard "
                                 f"{reader_shard_name(url)!r} ({path}): the shard was not part of the mix, "
                                 "or had no annotation file") from None
        if recorded is not None:
            check_digest(path, data, recorded)
        pf = pq.ParquetFile(pa.BufferReader(data))
        # captions: only where --caption-keys all; caption_groups: where the pool has named groups
        t = pf.read(columns=[c for c in READ + ["captions", caption_keys.GROUPS, caption_keys.TAGS]
                             if c in pf.schema_arrow.names])
        meta = json.loads((t.schema.metadata or {}).get(META_KEY, b"{}"))
        if meta.get("version") != VERSION:
            raise RecaptionError(f"{path}: decisions format {meta.get('version')!r}, this recaption reads {VERSION}")
        missing = [c for c in READ if c not in t.column_names]
        if missing:
            raise RecaptionError(f"{path} is not a recaption decisions file (missing columns {missing})")
        repeated = repeated_kept_key(t)
        if repeated:  # the mix fails the output shard that would hold it; the overlay, the shard
            raise RecaptionError(f"{url}: sample {key!r}: {repeated}, so the overlay does not apply this shard "
                                 f"({path}; repair or re-annotate it and re-run the mix)")
        check_identity(url, meta, verify, key)  # before any sample of the shard goes on
        self.url, self.strategy, self.name = url, meta["strategy"], reader_shard_name(url)
        self.level = meta.get("caption_keys") or "none"  # decisions made before caption keys: none
        self.extra_members = tuple(named(self.strategy).extra_members)  # beside txt and json (syn.txt for both)
        keyed = t.filter(pc.is_valid(t["key"]))  # a null key is a shard-level error row: no sample
        keys = keyed["key"].to_pylist()
        kept = keyed["kept"].to_numpy(zero_copy_only=False)
        slot = np.full(len(keys), _DROPPED, dtype=np.int64)
        slot[kept] = np.arange(int(kept.sum()))
        # what a kept sample gets, column-wise: its caption, synthetic caption and recaption field
        self.rows = keyed.filter(keyed["kept"])
        self.field = recaption_field.encode(self.rows, self.strategy)
        self.keys_text = caption_keys.encode(self.rows, self.level)
        self._choice: tuple | None = None  # (CaptionChoice, its keys' values per kept row)
        self.txt = self.rows["caption"].cast(pa.binary()).to_pylist()
        self.syn = self.rows["synthetic_caption"].cast(pa.binary()).to_pylist()
        self.index = dict(zip(keys, slot.tolist()))
        if len(self.index) < len(keys):
            self._mark_ambiguous(keys, slot)

    def _mark_ambiguous(self, keys: list, slot: np.ndarray) -> None:
        """A key listed twice cannot say which sample is which; it stays usable only where every
        row of it says the same."""
        seen: dict = {}
        for k, s in zip(keys, slot.tolist()):
            seen.setdefault(k, []).append(s)
        for k, slots in seen.items():
            if len(slots) > 1:
                rows = {json.dumps(self.row(s), sort_keys=True) if s >= 0 else None for s in slots}
                self.index[k] = slots[0] if len(rows) == 1 else _AMBIGUOUS

    def row(self, s: int) -> dict:
        """Kept row `s` as a dict (for samples off the common path: decoded, or json to rewrite)."""
        return self.rows.slice(s, 1).to_pylist()[0]

    def members(self, s: int, text) -> dict:
        """The members kept row `s` gives a sample whose json is `text` (bytes, a decoded object, or None)."""
        if isinstance(text, (bytearray, memoryview)):
            text = bytes(text)
        if isinstance(text, bytes):
            spliced = splice_recaption(text, self.field[s], self.keys_text[s])  # the common case: no parse, no row
            if spliced is not None:
                return members(self.txt[s], self.syn[s], spliced, self.extra_members)
        row = self.row(s)
        kept = (self.strategy, None, self.field[s], self.level, self.keys_text[s])
        if isinstance(text, dict):  # decoded already: the object the mixed json decodes to
            new = kept_members(row, *kept, extra=self.extra_members)[1]
            new["json"] = finite(decoded_json(text, recaption_object(row, self.strategy),
                                               caption_keys.as_dict(row, self.level)))
            return new
        text = text if isinstance(text, bytes) else None
        return kept_members(row, self.strategy, text, *kept[2:], extra=self.extra_members)[1]

    def chosen(self, s: int, choice: CaptionChoice, key: str, epoch: int) -> bytes | None:
        """The caption `choice` puts in kept row `s`'s txt (None: the sample has none of its keys)."""
        if self._choice is None or self._choice[0] is not choice:
            self._choice = (choice, self._choice_values(choice))
        values = self._choice[1]
        i = choice.pick([v[s] is not None for v in values], self.name, key, epoch)
        return None if i is None else values[i][s]

    def _choice_values(self, choice: CaptionChoice) -> list[list]:
        """Per key chosen among, its value in every kept row (None where the row lacks it), column-wise."""
        order = caption_keys.LEVELS
        if order.index(self.level) < order.index(choice.level):
            raise RecaptionError(
                f"{self.url}: the overlay's mix wrote caption keys {self.level!r}, and choosing among "
                f"{';'.join(choice.keys)} needs --caption-keys {choice.level}: re-run the mix with it")
        return [_nonblank(caption_values(self.rows, k)).cast(pa.binary()).to_pylist() for k in choice.keys]

    def lookup(self, key: str) -> int | None:
        """The row of a kept sample, None for a dropped one; an unknown key is an error."""
        s = self.index.get(key)
        if s is None:
            raise RecaptionError(f"{self.url}: sample {key!r} is not in the overlay's decisions for this shard "
                                 "(the shard holds samples it was not annotated with); re-annotate it")
        if s == _AMBIGUOUS:
            raise RecaptionError(f"{self.url}: key {key!r} appears more than once in the shard with different "
                                 "decisions; the overlay cannot tell those samples apart")
        return None if s == _DROPPED else s


class OverlayReader:
    """Samples in, mixed samples out (or None when dropped), from an overlay folder. Picklable: a
    copy (a DataLoader worker's, a Ray task's) loads its own shards; copies in one process share them.

    `captions` (keys in priority order as `"K1;K2"` or a list, or a mapping key -> weight; with
    `caption_probs` the weights in the keys' order) puts a caption chosen among the sample's
    caption keys into `txt` (`overlay.caption_choice`), fixed per sample by `seed` and the epoch:
    `epoch` is a number (`set_epoch`), or a shared value read as each sample is (anything with
    `get_value()`, such as open_clip's `SharedEpoch`, or `.value`, such as `multiprocessing.Value`),
    which DataLoader workers see change. `decoded` says whether samples arrive decoded; by default
    each sample's own members tell (text or objects where bytes were: a decoded `txt`, `json` or
    image), else the last sample that told (the webdataset stage holds back the first samples of
    a stream until one tells)."""

    def __init__(self, folder: str, *, verify: str = "full", shards_in_memory: int = 4,
                 storage_options: dict | str | None = None, captions=None, caption_probs=None,
                 seed: int = 0, epoch=0, decoded: bool | None = None):
        if verify not in VERIFY:
            raise RecaptionError(f"verify must be one of {', '.join(VERIFY)}, got {verify!r}")
        if shards_in_memory < 1:
            raise RecaptionError(f"shards_in_memory must be at least 1, got {shards_in_memory}")
        self.folder, self.verify, self.size = str(folder), verify, shards_in_memory
        self.storage_options = storage_options
        self.choice = None if captions is None else CaptionChoice(captions, caption_probs, seed)
        self.epoch, self.decoded, self._told = epoch, decoded, None
        with using(storage_options):
            _RECORDED[self._key()] = check_folder(self.folder)
        self._cache: OrderedDict = OrderedDict()
        self._current = None  # (url, decisions) of the last sample: the next one is most often the same shard's
        _preload()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_current")}

    def __setstate__(self, state):
        # Ray unpickles a batch function for every task; the copies in one worker process share
        # the shards already loaded, so a shard's decisions are not read again for each block.
        self.__dict__.update(state)
        key = (self.folder, self.verify, json.dumps(self.storage_options, sort_keys=True, default=str))
        self._cache = _PROCESS_CACHES.setdefault(key, OrderedDict())
        self._current = None

    def _key(self) -> tuple:
        return (self.folder, json.dumps(self.storage_options, sort_keys=True, default=str))

    def recorded(self) -> dict:
        """Shard name -> the sha256 its decisions file had when the mix wrote it (`_summary.json`'s
        `decisions`), read once per process: pickled readers do not carry a pool-sized map."""
        got = _RECORDED.get(self._key())
        if got is None:
            with using(self.storage_options):
                got = _RECORDED[self._key()] = check_folder(self.folder)
        return got

    def shard(self, url: str, key: str | None = None) -> ShardDecisions:
        """The decisions of the shard `url` reads, loaded and checked on first use (at its sample `key`)."""
        cur = self._current
        if cur is not None and cur[0] == url:
            return cur[1]
        d = self._cache.get(url)
        if d is not None:
            self._cache.move_to_end(url)
        else:
            name = reader_shard_name(url)
            path = decisions_path(self.folder, name)
            if name not in self.recorded():
                raise RecaptionError(f"{url}: sample {key!r}: the overlay's _summary.json records no decisions "
                                     f"file for shard {name!r} ({path}): the shard was not part of the mix, or "
                                     "had no annotation file")
            with using(self.storage_options):
                d = ShardDecisions(url, path, self.verify, key, self.recorded())
            self._cache[url] = d
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        self._current = (url, d)
        return d

    def set_epoch(self, epoch: int) -> None:
        """The epoch the caption choice draws for (in this process: use a shared value for workers)."""
        self.epoch = epoch

    def current_epoch(self) -> int:
        """The epoch now: the number given, or the shared value's."""
        e = self.epoch
        if hasattr(e, "get_value"):
            return int(e.get_value())
        return int(e.value) if hasattr(e, "value") else int(e)

    def apply(self, sample: dict) -> dict | None:
        """The sample as the mixed tars hold it (its dict updated), or None where the mix dropped it."""
        url, key = sample.get("__url__"), sample.get("__key__")
        if not isinstance(url, str) or not isinstance(key, str):
            raise RecaptionError("the overlay needs samples with __url__ and __key__ (webdataset's fields): "
                                 "apply it to the samples of tarfile_to_samples or read_webdataset")
        d = self.shard(url, key)
        s = d.lookup(key)
        if s is None:
            return None
        decoded = self._decoded(sample)
        new = d.members(s, sample.get("json"))
        if self.choice is not None:
            txt = d.chosen(s, self.choice, key, self.current_epoch())
            if txt is not None:
                new["txt"] = txt
        if decoded:  # what decoding the mixed sample gives: text, and json as an object
            new = {k: v.decode("utf-8") if k != "json" else json.loads(v) if isinstance(v, bytes) else v
                   for k, v in new.items()}
        sample.update(new)
        return sample

    def _knows(self, sample: dict) -> bool:
        """Whether this sample's type can be told: given, told before, or by its own members."""
        if self.decoded is None and self._told is None:
            self._told = _told_decoded(sample)
        return self.decoded is not None or self._told is not None

    def _decoded(self, sample: dict) -> bool:
        if self.decoded is not None:
            return self.decoded
        told = _told_decoded(sample)
        if told is not None:
            self._told = told
            return told
        return bool(self._told)


def _told_decoded(sample: dict) -> bool | None:
    """Whether a sample's members show it decoded (a member that is not bytes), or raw (`txt` or
    `json` as bytes); None when they cannot tell (only bytes, and neither txt nor json)."""
    for k, v in sample.items():
        if not k.startswith("__") and v is not None and not isinstance(v, (bytes, bytearray, memoryview)):
            return True
    return False if "txt" in sample or "json" in sample else None


def caption_values(rows: pa.Table, name: str) -> pa.Array:
    """The caption key `name` of every kept row (decisions columns), null where a row has none."""
    syn = rows["synthetic_caption"].combine_chunks().cast(pa.string())
    if name == caption_keys.RAW:
        return rows["raw_caption"].combine_chunks().cast(pa.string())
    if name == caption_keys.SYNTHETIC:
        return syn
    if name.startswith((caption_keys.GROUP, caption_keys.SENTENCE)):  # both kept in the caption_groups column
        return caption_keys.group_values(rows, name)
    if name.startswith(caption_keys.BY_CAPTIONER):
        who = pc.dictionary_encode(rows["captioner"].combine_chunks().cast(pa.string()))
        names = pa.array([caption_keys.BY_CAPTIONER + caption_keys.captioner_name(c)
                          for c in who.dictionary.to_pylist()], pa.string())
        mine = pc.fill_null(pc.equal(names.take(who.indices), name), False)
        return pc.if_else(mine, syn, pa.nulls(len(syn), pa.string()))
    i = int(name[len(caption_keys.CANDIDATE):])
    caps = rows["captions"].combine_chunks()
    lens = pc.fill_null(pc.list_value_length(caps), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    flat = pc.list_flatten(caps).cast(pa.string())
    has = lens > i
    if not len(flat):
        return pa.nulls(len(lens), pa.string())
    return flat.take(pa.array(np.where(has, starts + i, 0), mask=~has))


def _nonblank(col: pa.Array) -> pa.Array:
    """Null where a caption is empty or whitespace (open_clip skips such a key)."""
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), False)
    return pc.if_else(blank, pa.nulls(len(col), pa.string()), col)


def _preload() -> None:
    """pyarrow imports pandas, when installed, on its first conversion (about half a second): do it
    where the reader is made, before DataLoader workers fork, not in every worker at its first shard."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass


def check_digest(path: str, data: bytes, recorded: dict) -> None:
    """Refuse (one line) a decisions file whose bytes are not those the mix recorded for it."""
    name = path.rsplit("/", 1)[-1].removesuffix(".parquet")
    want = recorded.get(name)
    if want is None:
        raise RecaptionError(f"{path}: the overlay's _summary.json records no decisions file for shard {name!r} "
                             "(it was put there after the mix): re-run the mix")
    if provenance.decisions_digest(data) != want:
        raise RecaptionError(f"{path} is not the decisions file the mix wrote (its sha256 differs from the one "
                             "_summary.json records: edited or replaced since): re-run the mix")


def check_folder(folder: str) -> dict:
    """A folder a reader may apply: claimed by a mix (overlay, mix or run) that finished planning;
    returns the decisions digests its summary records (shard name -> sha256)."""
    from recaption.io.folders import read_record

    rec = read_record(folder)
    if rec is None or rec.get("kind") not in KINDS:
        what = "no recaption mix" if rec is None else f"a {rec.get('kind')} folder"
        raise RecaptionError(f"{folder} is {what}, not a mix overlay; write one with `recaption mix ... --overlay`")
    summary = join(folder, "_summary.json")
    if not exists(summary):
        raise RecaptionError(f"{folder}: the mix that writes it has not finished ({summary} is missing); "
                             "run its command again")
    try:
        s = json.loads(read_text(summary))
    except ValueError as e:
        raise RecaptionError(f"{summary} is not valid JSON ({e})") from None
    recorded = s.get("decisions") if isinstance(s, dict) else None
    if not isinstance(recorded, dict):
        raise RecaptionError(f"{summary} records no digests of its decisions files (written by an older "
                             "recaption): run the mix command again to record them")
    return recorded
