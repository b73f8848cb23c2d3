"""The duplicate and evaluation-overlap settings of a mix as data, without numpy: `--dedup RULE`,
`--dedup-keep`, `--decontaminate EVAL` and `--decontaminate-rule RULE` parsed, checked and written
back the same way from the command line and from a recipe's `dedup` and `decontaminate` sections
(docs/formats.md#duplicates-and-evaluation-overlap). Running them is `recaption.mixing.removal`'s work.

A rule is `exact`, `phash[=K]` or `embedding=COSINE`; rules run in that order whatever order they
are given in, each on the samples the earlier ones kept.
"""
from __future__ import annotations

import math

from recaption.errors import RecaptionError, unknown

# pHash thresholds in bits (the tables of docs/formats.md#thresholds say why)
PHASH_K = 2  # among the pool's own samples: 10^7 samples at k = 2 give about 0.03 chance matches
OVERLAP_PHASH_K = 8  # against an evaluation set: 10^7 x 50,000 pairs at k = 8 give about 350
RULES = ("exact", "phash", "embedding")  # the order they run in
DEFAULT_OVERLAP = {"exact": None, "phash": OVERLAP_PHASH_K}  # --decontaminate without rules


def usage(overlap: bool = False) -> str:
    """The --dedup / --decontaminate-rule help."""
    k = OVERLAP_PHASH_K if overlap else PHASH_K
    if overlap:
        return (f"a rule of --decontaminate, repeatable: exact (same image bytes), phash[=K] (pHash within K bits, "
                f"either orientation; default {k}), embedding=COSINE (CLIP image embeddings, needs --save-embeddings "
                f"at annotate time); default: exact and phash={k} (docs/formats.md#duplicates-and-evaluation-overlap)")
    return (f"drop duplicates before the strategy, repeatable: exact (same image bytes), phash[=K] (pHash within K "
            f"bits, either orientation; default {k}), embedding=COSINE (CLIP image embeddings within k-means clusters, "
            "SemDeDup-style; needs --save-embeddings at annotate time and recaption[dedup]); one sample of each "
            "group is kept (docs/formats.md#duplicates-and-evaluation-overlap)")


def normalize(spec, overlap: bool = False) -> dict:
    """Rules as {rule: value} in run order, from `NAME[=VALUE]` strings (a list, or one string, each
    possibly comma-separated) or a mapping (a recipe: `{exact: true, phash: 2}`; false removes a rule)."""
    if spec is None or spec == "" or spec is False:
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        parts = [spec] if isinstance(spec, str) else list(spec)
        items = []
        for p in parts:
            if not isinstance(p, str):
                raise RecaptionError(f"a duplicate rule is NAME or NAME=VALUE, got {p!r}")
            for one in (x.strip() for x in p.split(",")):
                if one:
                    name, eq, value = one.partition("=")
                    items.append((name.strip(), value.strip() if eq else None))
    out: dict = {}
    for name, value in items:
        if name not in RULES:
            raise unknown(f"{'--decontaminate-rule' if overlap else '--dedup'} rule", name, RULES)
        if value is False:
            out.pop(name, None)
            continue
        out[name] = _value(name, value, overlap)
    return {r: out[r] for r in RULES if r in out}


def _value(name: str, value, overlap: bool):
    if name == "exact":
        if value not in (None, True, "", "true"):
            raise RecaptionError(f"rule exact takes no value, got {value!r}")
        return None
    if name == "phash":
        if value in (None, True, ""):
            return OVERLAP_PHASH_K if overlap else PHASH_K
        try:
            k = float(value)
        except (TypeError, ValueError):
            raise RecaptionError(f"rule phash takes a number of bits, got {value!r}") from None
        if k != int(k) or not 0 <= k <= 32:
            raise RecaptionError(f"rule phash takes a whole number of bits from 0 to 32, got {value!r}")
        return int(k)
    if value in (None, True, ""):
        raise RecaptionError("rule embedding needs a cosine: embedding=COSINE (no source fixes one for CLIP "
                             "embeddings; see docs/formats.md#thresholds)")
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise RecaptionError(f"rule embedding takes a cosine, got {value!r}") from None
    if not math.isfinite(t) or not -1.0 <= t <= 1.0:
        raise RecaptionError(f"rule embedding takes a cosine within [-1, 1], got {value!r}")
    return t


def label(name: str, value) -> str:
    """`phash=2`, `exact`: a rule as it is written."""
    return name if value is None else f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"


def keep_column(keep: str) -> str | None:
    """The score column of `best:COLUMN` (None for `first`); one line for anything else."""
    if keep in (None, "", "first"):
        return None
    if not isinstance(keep, str) or not keep.startswith("best:") or not keep[5:].strip():
        raise RecaptionError(f"--dedup-keep takes first or best:COLUMN (e.g. best:clip_raw), got {keep!r}")
    column = keep[5:].strip()
    if column not in numeric_columns():
        raise unknown("numeric annotation column", column, numeric_columns(), "; --dedup-keep best:COLUMN takes one")
    return column


def numeric_columns() -> list[str]:
    """The annotation columns a survivor can be chosen by (highest first)."""
    from recaption import annotators

    fixed = ["clip_raw", "sieve", "sieve_mean"]
    numeric = ("int32", "int64", "uint64", "float32", "float64")
    return fixed + [c.name for c in annotators.extra_columns() if c.type in numeric and c.name not in fixed
                    and c.name not in ("phash", "phash_mirror")]


# -- recipes ----------------------------------------------------------------------------------
DEDUP_KEYS = {"exact", "phash", "embedding", "keep"}
DECONTAMINATE_KEYS = {"eval", "exact", "phash", "embedding", "model"}


def from_recipe(r: dict) -> dict:
    """The MixConfig fields of a recipe's `dedup` and `decontaminate` sections."""
    out: dict = {}
    d = r.get("dedup")
    if isinstance(d, dict):
        bad = set(d) - DEDUP_KEYS
        if bad:
            raise RecaptionError(f"unknown dedup keys {sorted(bad)}; known: {sorted(DEDUP_KEYS)}")
        out["dedup"] = {k: v for k, v in d.items() if k != "keep" and v is not None}
        out["dedup_keep"] = d.get("keep") or "first"
    elif d:
        out["dedup"] = d
    e = r.get("decontaminate")
    if isinstance(e, str):
        out["decontaminate"] = e
    elif isinstance(e, dict):
        bad = set(e) - DECONTAMINATE_KEYS
        if bad:
            raise RecaptionError(f"unknown decontaminate keys {sorted(bad)}; known: {sorted(DECONTAMINATE_KEYS)}")
        if not e.get("eval"):
            raise RecaptionError("decontaminate needs eval: PATH (a folder of images or shards)")
        out["decontaminate"], out["decontaminate_model"] = str(e["eval"]), e.get("model")
        out["decontaminate_rules"] = {k: v for k, v in e.items() if k in ("exact", "phash", "embedding")
                                      and v is not None}
    elif e:
        raise RecaptionError("decontaminate is an EVAL path or a mapping {eval: PATH, ...}")
    return out
