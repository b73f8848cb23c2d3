"""Every caption of a kept sample under a top-level json key of its own (`mix --caption-keys`).

A trainer that picks its caption from the json (open_clip's `--json-text-key 'KEY1;KEY2'` with
`--json-text-key-probs`, which reads a top-level string field per key and skips a key a sample
lacks) can then choose among the raw alt-text and the synthetic captions without a rewrite:

    none   no keys (the default): txt and the nested `recaption` object only
    best   recaption_raw                   the alt-text
           recaption_synthetic             the synthetic caption the mix selected
           recaption_synthetic_<captioner> the same caption under the name of the captioner that
                                           wrote it: each captioner's best, where shards were
                                           annotated by different captioners
    all    best, and recaption_candidate_<i> for every candidate (i from 0, in generation order)

and for every named caption group G the annotation file holds (`recaption annotate --group`),
in group-name order: `recaption_group_<G>` (best: the group's candidate with the highest CLIP
score, as the synthetic caption is chosen) and, with `all`, `recaption_group_<G>_candidate_<i>`.
`sentences` writes what `all` does and, for a caption longer than the CLIP context (the
annotation's `length` group: its token count past `clip_context`), each of its sentences
(`recaption.scoring.sentences`, the rule its sentence scores were computed with), for trainers that
sample sub-captions: `recaption_sentence_<i>` for the synthetic caption the mix selected,
`recaption_group_<G>_sentence_<i>` for a named group's best. A decisions file carries the group
and sentence keys in one column, `caption_groups` (list of {key, caption}, in the order written),
so every reader encodes them as it encodes the others.

A key is written only where the sample has that caption (no nulls). `<captioner>` is the last
part of the annotation's `captioner` (a model id or a path), with every character outside
`A-Za-z0-9._-` replaced by `-`, so no key holds open_clip's `;` separator or whitespace.

`encode` writes the keys of many rows at once (Arrow), `as_dict` those of one row; the json text
`output.members` splices from either is the same, byte for byte.
"""
from __future__ import annotations

import json
import re
from json.encoder import encode_basestring

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recaption.errors import RecaptionError
from recaption.output.recaption_field import json_strings

RAW = "recaption_raw"
SYNTHETIC = "recaption_synthetic"
BY_CAPTIONER = "recaption_synthetic_"  # + the captioner's name
CANDIDATE = "recaption_candidate_"  # + the candidate's index
GROUP = "recaption_group_"  # + a named caption group's name (its best), then "_candidate_I" (all)
SENTENCE = "recaption_sentence_"  # + I: sentence I of the synthetic caption, where it is longer than the context
GROUPS = "caption_groups"  # the decisions column the group keys are written from
TAGS = "json_tags"  # the decisions column of `mix --json-tags`: `"TAG": VALUE, ` per tag the row has
LEVELS = ("none", "best", "all", "sentences")  # each writes what the one before it does, and more
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_INDEX = "(?:0|[1-9][0-9]*)"
_NAME = re.compile(rf"^(?:{RAW}|{SYNTHETIC}|{BY_CAPTIONER}[A-Za-z0-9._-]+|{CANDIDATE}{_INDEX}|{SENTENCE}{_INDEX}"
                   rf"|{GROUP}[a-z][a-z0-9-]*(?:_candidate_{_INDEX}|_sentence_{_INDEX})?)$")


def captioner_name(captioner: str) -> str:
    """The `<captioner>` of a key: the captioner's last path part, made safe for a key."""
    last = captioner.rstrip("/").rsplit("/", 1)[-1] or captioner
    return _UNSAFE.sub("-", last) or "-"


def check_captioners(captioners: list[str]) -> None:
    """Two captioners of one pool must not share a key: one line naming them."""
    seen: dict[str, str] = {}
    for c in captioners:
        other = seen.setdefault(captioner_name(c), c)
        if other != c:
            raise RecaptionError(f"captioners {other!r} and {c!r} would share the json key "
                                 f"{BY_CAPTIONER}{captioner_name(c)}; give one of them another name "
                                 "(import-captions --captioner, or annotate from a folder named otherwise)")


def is_key(name: str) -> bool:
    """Whether `name` is a key some level writes (a reader may choose among these)."""
    return bool(_NAME.match(name))


def level_of(name: str) -> str:
    """The least level that writes the key `name`."""
    if name.startswith(SENTENCE) or (name.startswith(GROUP) and "_sentence_" in name):
        return "sentences"
    return "all" if name.startswith(CANDIDATE) or (name.startswith(GROUP) and "_candidate_" in name) else "best"


def group_key(group: str, i: int | None = None) -> str:
    """The key of a named group's best caption (`i` None) or of its candidate i."""
    return f"{GROUP}{group}" if i is None else f"{GROUP}{group}_candidate_{i}"


def sentence_key(group: str | None, i: int) -> str:
    """The key of sentence i of the synthetic caption (`group` None) or of a named group's best."""
    return f"{SENTENCE}{i}" if group is None else f"{GROUP}{group}_sentence_{i}"


ENTRY = pa.struct([("key", pa.string()), ("caption", pa.string())])


def group_column(n: int, groups: list[tuple], level: str, synthetic: tuple | None = None) -> pa.Array:
    """The `caption_groups` column of `n` decisions rows: per row, the keys of every named group
    `(name, best, candidates[, long])` (string arrays; candidates a list array, read for `all`),
    group by group, the best first, then each candidate; a caption that is null is left out. With
    `sentences`, `long` (a bool per row, or None) says whose best is longer than the context: its
    sentences follow the group's keys, and `synthetic` (the synthetic caption, its `long`) gives
    the synthetic caption's sentences, first."""
    rows, seq, keys, values = [], [], [], []
    order = 0
    if needs_sentences(level) and synthetic is not None:
        order = _sentence_entries(None, *synthetic, order, rows, seq, keys, values)
    for name, best, cands, *long in groups:
        best = _flat(best)
        has = best.is_valid().to_numpy(zero_copy_only=False)
        at = np.flatnonzero(has)
        rows.append(at)
        seq.append(np.full(at.size, order, np.int64))
        keys.append(np.full(at.size, group_key(name), object))
        values.append(best.filter(pa.array(has)))
        order += 1
        if needs_candidates(level) and cands is not None:
            caps = _flat(cands)
            if pa.types.is_large_list(caps.type):
                caps = caps.cast(pa.list_(caps.type.value_type))
            lens = pc.fill_null(pc.list_value_length(caps), 0).to_numpy(zero_copy_only=False).astype(np.int64)
            flat = pc.list_flatten(caps).cast(pa.string())
            row = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
            starts = np.zeros(len(lens), np.int64)
            np.cumsum(lens[:-1], out=starts[1:])
            pos = np.arange(len(flat), dtype=np.int64) - np.repeat(starts, lens)
            ok = flat.is_valid().to_numpy(zero_copy_only=False)
            names = np.array([group_key(name, i) for i in range(int(lens.max(initial=0)))], object)
            rows.append(row[ok])
            seq.append(order + pos[ok])
            keys.append(names[pos[ok]] if ok.any() else np.array([], object))
            values.append(flat.filter(pa.array(ok)))
            order += int(lens.max(initial=0))
        if needs_sentences(level) and long and long[0] is not None:
            order = _sentence_entries(name, best, long[0], order, rows, seq, keys, values)
    if not rows:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], ENTRY))
    row, s = np.concatenate(rows), np.concatenate(seq)
    by = np.lexsort((s, row))
    entries = pa.StructArray.from_arrays(
        [pa.array(np.concatenate(keys)[by].tolist() if row.size else [], pa.string()),
         pa.concat_arrays([v.cast(pa.string()) for v in values]).take(pa.array(by))], fields=list(ENTRY))
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=n), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), entries)


def _sentence_entries(group, text, long, order: int, rows, seq, keys, values) -> int:
    """Append the sentence keys of `text` where `long` to the entry lists; the next order."""
    from recaption.scoring.sentences import split

    text = _flat(text).cast(pa.string())
    at = np.flatnonzero(np.asarray(long, bool) & text.is_valid().to_numpy(zero_copy_only=False))
    parts = split(text.take(pa.array(at)))
    lens = pc.fill_null(pc.list_value_length(parts), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    pos = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(starts, lens)
    names = np.array([sentence_key(group, i) for i in range(int(lens.max(initial=0)))], object)
    rows.append(np.repeat(at, lens))
    seq.append(order + pos)
    keys.append(names[pos] if pos.size else np.array([], object))
    values.append(pc.list_flatten(parts))
    return order + int(lens.max(initial=0))


def _flat(col):
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _groups_text(col) -> pa.Array:
    """`"key": "caption", ` of every entry of each row's `caption_groups`, joined per row."""
    lists = _flat(col)
    flat = pc.list_flatten(lists)
    names = pc.binary_join_element_wise(json_strings(pc.struct_field(flat, "key")), pa.scalar(": "), "")
    parts = pc.fill_null(_member(names, pc.struct_field(flat, "caption")), "")
    return pc.fill_null(pc.binary_join(pa.ListArray.from_arrays(_offsets(lists), parts), ""), "")


def _offsets(lists: pa.ListArray) -> pa.Array:
    lens = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    return pa.array(offsets.astype(np.int32))


def group_values(rows: pa.Table, name: str) -> pa.Array:
    """The group key `name` of every decisions row (null where a row has none)."""
    n = len(rows)
    if GROUPS not in rows.column_names:
        return pa.nulls(n, pa.string())
    lists = _flat(rows[GROUPS])
    lens = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(lists)
    row = np.repeat(np.arange(n, dtype=np.int64), lens)
    hit = pc.fill_null(pc.equal(pc.struct_field(flat, "key"), name), False).to_numpy(zero_copy_only=False)
    at = np.full(n, -1, np.int64)
    at[row[hit]] = np.flatnonzero(hit)
    return pc.struct_field(flat, "caption").take(pa.array(at, mask=at < 0))


def tag_column(t: pa.Table, names: list[str]) -> pa.Array:
    """The `json_tags` column of one file's decisions: per row `"TAG": VALUE, ` for each tag of
    `names`, the value as Arrow writes the float, `null` where the row has none (null or not
    finite): the key says recaption's value, so an input json's own key is never left standing."""
    n = t.num_rows
    parts = []
    for name in names:
        x = _flat(t[name]).cast(pa.float64())
        finite = pc.fill_null(pc.is_finite(x), False)
        text = pc.if_else(finite, x.cast(pa.string()), _same("null", n))
        parts.append(_member(_same(encode_basestring(name) + ": ", n), text, raw=True))
    return pc.binary_join_element_wise(*parts, "") if parts else _same("", n)


def tag_names(keys_text: bytes) -> list[bytes]:
    """The tag keys (quoted) a row's key text adds: a json already holding one is written anew, not
    spliced (the caption keys all start `recaption`, which the splice looks for already)."""
    if not keys_text:
        return []
    return [w for w in _quoted_tags() if w + b": " in keys_text]


_TAGS: tuple = (-1, ())  # (the annotator registry's change count, its tag columns quoted): a reader asks per sample


def _quoted_tags() -> tuple:
    global _TAGS
    from recaption.annotators import REGISTRY, tag_columns

    if _TAGS[0] != REGISTRY.changes:
        _TAGS = (REGISTRY.changes, tuple(encode_basestring(t).encode() for t in tag_columns()))
    return _TAGS[1]


def needs_candidates(level: str) -> bool:
    """Whether the level writes every candidate (the decisions then carry them)."""
    return level in ("all", "sentences")


def needs_sentences(level: str) -> bool:
    """Whether the level writes the sentences of the captions longer than the CLIP context."""
    return level == "sentences"


def as_dict(row: dict, level: str) -> dict:
    """The keys of one decisions row (with `captions` for `all`), in the order they are written."""
    tags = row.get(TAGS)
    tagged = json.loads("{" + tags[:-2] + "}") if tags else {}
    if level == "none":
        return tagged
    raw, syn, who = row.get("raw_caption"), row.get("synthetic_caption"), row.get("captioner")
    out = {}
    if raw is not None:
        out[RAW] = raw
    if syn is not None:
        out[SYNTHETIC] = syn
        if who is not None:
            out[BY_CAPTIONER + captioner_name(who)] = syn
    if needs_candidates(level):
        for i, c in enumerate(row.get("captions") or []):
            if c is not None:
                out[f"{CANDIDATE}{i}"] = c
    for e in row.get(GROUPS) or []:
        out[e["key"]] = e["caption"]
    return out | tagged


def text_of(keys: dict) -> bytes:
    """What `encode` writes for one row's keys: each `"key": "value", ` (a tag's value a JSON number)."""
    return "".join(f"{encode_basestring(k)}: {encode_basestring(v) if isinstance(v, str) else json.dumps(v)}, "
                   for k, v in keys.items()).encode("utf-8")


def _member(names: pa.Array, values: pa.Array, raw: bool = False) -> pa.Array:
    """`"name": "value", ` per row (`raw`: the value as it is, a number); null where the name or the
    value is."""
    return pc.binary_join_element_wise(names, values if raw else json_strings(values), ", ", "")


def _same(text: str, n: int) -> pa.Array:
    return pa.array([text], pa.string()).take(pa.array(np.zeros(n, np.int32)))


def _by_captioner(captioner: pa.Array, syn: pa.Array) -> pa.Array:
    enc = pc.dictionary_encode(captioner.cast(pa.string()))
    names = pa.array([encode_basestring(BY_CAPTIONER + captioner_name(c)) + ": " for c in enc.dictionary.to_pylist()],
                     pa.string())
    return _member(names.take(enc.indices), syn)


def _candidates(captions) -> pa.Array:
    caps = captions.combine_chunks() if isinstance(captions, pa.ChunkedArray) else captions
    if pa.types.is_large_list(caps.type):
        caps = caps.cast(pa.list_(caps.type.value_type))
    lens = pc.fill_null(pc.list_value_length(caps), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = pc.list_flatten(caps).cast(pa.string())
    pos = np.arange(len(flat), dtype=np.int64) - np.repeat(offsets[:-1], lens)
    names = pa.array([encode_basestring(f"{CANDIDATE}{i}") + ": " for i in range(int(lens.max(initial=0)))],
                     pa.string())
    parts = pc.fill_null(_member(names.take(pa.array(pos)), flat), "")
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), parts), "")


def _column(t: pa.Table, name: str) -> pa.Array:
    col = t[name].combine_chunks()
    return pa.nulls(len(col), pa.string()) if pa.types.is_null(col.type) else col.cast(pa.string())


def encode(t: pa.Table, level: str) -> list[bytes]:
    """`text_of(as_dict(row, level))` for every row of `t` (decisions columns), column-wise."""
    n = len(t)
    tags = t[TAGS].combine_chunks() if TAGS in t.column_names else None
    if not n or (level == "none" and tags is None):
        return [b""] * n
    if level == "none":
        return tags.cast(pa.binary()).to_pylist()
    raw, syn, who = _column(t, "raw_caption"), _column(t, "synthetic_caption"), _column(t, "captioner")
    parts = [_member(_same(encode_basestring(RAW) + ": ", n), raw),
             _member(_same(encode_basestring(SYNTHETIC) + ": ", n), syn),
             _by_captioner(who, syn)]
    if needs_candidates(level):
        if "captions" not in t.column_names:
            raise RecaptionError("internal: --caption-keys all needs the decisions' captions column")
        parts.append(_candidates(t["captions"]))
    if GROUPS in t.column_names:
        parts.append(_groups_text(t[GROUPS]))
    if tags is not None:
        parts.append(tags)
    joined = pc.binary_join_element_wise(*[pc.fill_null(p, "") for p in parts], "")
    return joined.cast(pa.binary()).to_pylist()
