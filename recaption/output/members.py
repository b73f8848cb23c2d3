"""What a kept sample's members become: its `txt` (the chosen caption), its json with the
`recaption` object (after the top-level caption keys of `mix --caption-keys`, where asked), and
`syn.txt` for `both`. The mix writer (`recaption.stages.write_mix`) and the overlay readers
(`recaption.webdataset`) both build samples here, so a sample read through an overlay equals the
written one byte for byte.
"""
from __future__ import annotations

import json
import math
import re

from recaption.output import caption_keys

from recaption.output import recaption_field

# the decisions columns a kept sample is built from
READ = ["key", "kept", "caption_source", "caption", "raw_caption", "synthetic_caption", "clip_raw",
        "clip_synthetic", "sieve", "blend", "captioner"]


def recaption_object(row: dict, strategy: str) -> dict:
    """The `recaption` json field of a kept sample, from its decisions row (scores there are null,
    never NaN); `recaption_field.encode` writes the same for many rows at once."""
    return {**{k: row[k] for k in recaption_field.FIELDS}, "strategy": strategy}


def kept_members(row: dict, strategy: str, json_text: bytes | None, added: bytes | None = None,
                 level: str = "none", keys_text: bytes | None = None, *,
                 extra: tuple[str, ...]) -> tuple[dict, dict[str, bytes]]:
    """What a kept sample gets from its decisions row: its json object, and the members that
    replace or join its own. `added` is the recaption field's json text when already encoded
    (`recaption_field.encode`, which the writer uses); `level` is the mix's `--caption-keys`,
    `keys_text` their text when already encoded (`caption_keys.encode`); `extra` the strategy's
    extra members (its `extra_members`: the output side knows no strategy)."""
    meta, text = with_recaption(json_text, recaption_object(row, strategy), added,
                                caption_keys.as_dict(row, level), keys_text)
    syn = row["synthetic_caption"]
    return meta, members(row["caption"].encode("utf-8"), None if syn is None else syn.encode("utf-8"), text, extra)


def members(caption: bytes, synthetic: bytes | None, json_text: bytes, extra: tuple[str, ...]) -> dict[str, bytes]:
    """The members a kept sample gets, in this order: `txt`, `json`, and the strategy's `extra`
    members (`syn.txt` for `both`) where there is a synthetic caption. The mixed tars and the
    overlay readers (`recaption.webdataset`) both build samples here."""
    new = {"txt": caption, "json": json_text}
    if synthetic is not None:
        for member in extra:  # each holds synthetic_caption (strategies.base.MEMBER_SOURCES)
            new[member] = synthetic
    return new


_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode  # one encoder, not one a call


def with_recaption(text: bytes | None, rc: dict, added: bytes | None = None, keys: dict | None = None,
                   keys_text: bytes | None = None) -> tuple[dict, bytes]:
    """The sample's json object and its text with the caption `keys` and then `"recaption": rc`
    added as its last fields. The original text is kept as it is and the fields spliced in before
    its closing brace; where it holds a NaN or infinity (JSON has none: they become null), or
    already a `recaption` field or one of `keys` (replaced), the object is written anew."""
    keys = keys or {}
    added = _ENCODE(rc).encode("utf-8") if added is None else added
    keys_text = caption_keys.text_of(keys) if keys_text is None else keys_text
    odd = []
    if not text:
        meta = {}
    elif b"NaN" in text or b"Infinity" in text:  # maybe inside a string: let the parser say
        meta = json.loads(text, parse_constant=lambda c: odd.append(c) or float(c))
    else:
        meta = json.loads(text)
    body = text.rstrip() if text else b""
    if text and not odd and "recaption" not in meta and not any(k in meta for k in keys) and body.endswith(b"}"):
        return meta, _splice(body, added, keys_text)
    return meta, _ENCODE(finite(decoded_json(meta, rc, keys))).encode("utf-8")


def decoded_json(meta: dict, rc: dict, keys: dict) -> dict:
    """The object a kept sample's json decodes to, from its original object (NaN left to `finite`)."""
    return {**meta, **keys, "recaption": rc}


def _splice(body: bytes, added: bytes, keys_text: bytes = b"") -> bytes:
    inner = body[:-1].rstrip()
    return inner + (b"" if inner.endswith(b"{") else b", ") + keys_text + b'"recaption": ' + added + b"}"


# an escaped character from 0x60 to 0x7f (every lower-case letter) could spell a `recaption` key
_ESCAPED_LOWER = re.compile(rb"\\u00[67][0-9a-fA-F]")


def splice_recaption(text: bytes, added: bytes, keys_text: bytes = b"") -> bytes | None:
    """What `with_recaption` gives for `text`, without parsing it, where the text cannot hold a
    NaN, an infinity, a `recaption` field or a caption key (each key starts `recaption_`; not even
    one spelled with escapes); else None. The text must be a JSON object, as every kept sample's
    json was when it was annotated (the overlay readers check that a shard is unchanged)."""
    body = text.rstrip()
    if (body.endswith(b"}") and b"recaption" not in text and b"NaN" not in text and b"Infinity" not in text
            and (b"\\u00" not in text or not _ESCAPED_LOWER.search(text))
            and not any(w in text for w in caption_keys.tag_names(keys_text))):
        return _splice(body, added, keys_text)
    return None


_WHITESPACE = " \t\n\r\x0b\x0c"  # what bytes.rstrip() strips


def splice_many(texts: list, added, keys=None):
    """`splice_recaption` for many texts at once (bytes or None; `added` an Arrow binary array):
    an Arrow binary array, null where it gives None or there is no text; the same bytes, made a
    column at a time. The texts are searched for what rules a splice out all together first, and
    one by one only where that finds something."""
    import pyarrow as pa
    import pyarrow.compute as pc

    blob = b"\n".join(x for x in texts if x)
    # a tag key the json holds already (LAION's own punsafe) is written anew, not spliced twice
    tags = caption_keys.tag_names(b"".join(x for x in keys.to_pylist() if x)) if keys is not None else []
    words = (b"recaption", b"NaN", b"Infinity", *tags)
    if any(w in blob for w in words) or (b"\\u00" in blob and _ESCAPED_LOWER.search(blob)):
        fine = [bool(x) and not any(w in x for w in words)
                and (b"\\u00" not in x or not _ESCAPED_LOWER.search(x)) for x in texts]
    else:
        fine = [bool(x) for x in texts]
    try:
        s = pa.array(texts, pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:  # not UTF-8 (no kept sample's json is): one at a time
        ks = keys.to_pylist() if keys is not None else [b""] * len(texts)
        return pa.array([splice_recaption(x, a, k) if x else None for x, a, k in zip(texts, added.to_pylist(), ks)],
                        pa.binary())
    body = pc.utf8_rtrim(s, characters=_WHITESPACE)
    ok = pc.and_(pc.ends_with(body, "}"), pa.array(fine, pa.bool_())).fill_null(False)
    inner = pc.utf8_rtrim(pc.utf8_slice_codeunits(body, 0, -1), characters=_WHITESPACE)
    sep = pc.if_else(pc.ends_with(inner, "{"), "", ", ")
    keys = keys if keys is not None else pa.array([b""] * len(texts), pa.binary())
    new = pc.binary_join_element_wise(inner.cast(pa.binary()), sep.cast(pa.binary()), keys, b'"recaption": ', added,
                                      b"}", b"")
    return pc.if_else(ok, new, pa.nulls(len(texts), pa.binary()))


def finite(x):
    """x with every NaN and infinity, however deeply nested, as None (JSON has neither)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x
