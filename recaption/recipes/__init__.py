"""Recipes: YAML files naming a captioner, scorers and a mix; `--set key=value` overrides any field.

Keys: captioner (preset/id/path or null), caption (decoding and captioner options), clip
({model, pretrained} or null), sieve ({model, mask} or null; model `default` is all-MiniLM-L6-v2),
rerank (a list of {model, pretrained, top_k}), metrics ({lang_model}), and a section per other
registered annotator (`recaption.annotators`: its options, or true); filters (rules applied before
the mix: a mapping rule -> value, a list of `NAME[=VALUE]`, or a preset name such as `basic`; see
`recaption.mixing.filters`), dedup (duplicate rules after the filters: `{exact: true, phash: 2,
embedding: COSINE, keep: first}` or a list of `NAME[=VALUE]`), decontaminate (evaluation-set overlap:
`{eval: PATH, exact: true, phash: 8, embedding: COSINE, model: NAME}`, or the EVAL path alone),
mix (MixConfig fields), batch_size, device (`recaption.dedup.options`).
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from recaption.errors import RecaptionError, unknown

HERE = Path(__file__).parent
OWN_KEYS = {"description", "source", "filters", "dedup", "decontaminate", "mix", "batch_size",
            "device"}  # the annotators add theirs
SECTION_KEYS = {
    "mix": {"strategy", "threshold", "fraction", "filter_synthetic", "alpha", "samples_per_shard", "keep_sharding",
            "caption_keys", "synthetic_group", "json_tags"},
}


def top_keys() -> set[str]:
    """Every key a recipe may have: its own, and each registered annotator's sections."""
    from recaption import annotators

    return OWN_KEYS | annotators.recipe_keys()


def list_recipes() -> dict[str, dict]:
    """Every bundled recipe by name, as its yaml holds it."""
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(HERE.glob("*.yaml"))}


def load_recipe(name_or_path: str, sets: list[str] | None = None) -> dict:
    """A bundled recipe by name or a yaml file by path, with `key=value` overrides applied and checked."""
    p = Path(name_or_path)
    if (HERE / f"{name_or_path}.yaml").is_file():
        data = yaml.safe_load((HERE / f"{name_or_path}.yaml").read_text())
    elif p.is_file():
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise RecaptionError(f"recipe {p} is not valid YAML: {e}") from None
    else:
        raise unknown("recipe", name_or_path, list_recipes(), ", or a YAML file")
    if not isinstance(data, dict):
        raise RecaptionError(f"recipe {name_or_path} must be a mapping")
    data = copy.deepcopy(data)
    for s in sets or []:
        _set(data, s)
    validate(data, name_or_path)
    return data


def _set(data: dict, assignment: str):
    if "=" not in assignment:
        raise RecaptionError(f"--set takes key=value (e.g. mix.fraction=0.3), got {assignment!r}")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    parts = key.strip().split(".")
    d = data
    for part in parts[:-1]:
        if d.get(part) is None:
            d[part] = {}
        d = d[part]
        if not isinstance(d, dict):
            raise RecaptionError(f"--set {key}: {part} is not a section")
    d[parts[-1]] = value


def validate(data: dict, where: str):
    """Refuse unknown sections and keys, naming the recipe and what is known."""
    known = top_keys()
    unknown = set(data) - known
    if unknown:
        raise RecaptionError(f"recipe {where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    for sec, keys in SECTION_KEYS.items():
        v = data.get(sec)
        if v is None:
            continue
        if not isinstance(v, dict):
            raise RecaptionError(f"recipe {where}: {sec} must be a mapping or null")
        bad = set(v) - keys
        if bad:
            raise RecaptionError(f"recipe {where}: unknown {sec} keys {sorted(bad)}; known: {sorted(keys)}")
    mix = data.get("mix") or {}
    for k in ("fraction", "threshold", "alpha"):
        if mix.get(k) is not None and not isinstance(mix[k], (int, float)):
            raise RecaptionError(f"recipe {where}: mix.{k} must be a number, got {mix[k]!r}")
    try:
        check_types(data, None)  # the top level and mix, before a config is built from them
        try:
            parts = recipe_parts(data)
        except TypeError as e:  # a value of the wrong type broke a config's own check: name its key
            check_types(data, recipe_parts(_probe(data)))
            raise RecaptionError(str(e)) from None
        check_types(data, parts)
    except RecaptionError as e:
        raise RecaptionError(f"recipe {where}: {e}") from None


def _probe(data: dict) -> dict:
    """The recipe with each section reduced to its model: configs of the same classes, to read
    the declared types from."""
    out = dict(data)
    for k, v in data.items():
        if isinstance(v, dict) and k not in OWN_KEYS:
            out[k] = {m: v[m] for m in ("model",) if m in v}
    return out


TOP_TYPES = {"batch_size": int | None, "device": str | None, "description": str | None}
AT_LEAST_ONE = ("batch_size", "num_")  # whole numbers named so count things: 0 or less is no setting


def check_types(data: dict, parts: "RecipeParts | None") -> None:
    """Every value a recipe sets against the type its setting declares (the config dataclass field,
    or the annotator's Option), and counts against their range: one line naming the key. Without
    `parts`, the top-level keys and mix; with it, the annotators' sections."""
    if parts is None:
        from recaption.mixing.strategies import MixConfig

        for k, hint in TOP_TYPES.items():
            check_value(k, data.get(k), hint)
        for k, v in (data.get("mix") or {}).items():
            check_value(f"mix.{k}", v, _hints(MixConfig).get(k))
        return
    from recaption import annotators

    for name, cfg in parts.annotators.items():
        cls = annotators.get(name)
        for key in cls.recipe_keys or (name,):
            section = data.get(key)
            if not isinstance(section, dict):
                continue
            options = {o.name: o.type for o in cls.options}
            for k, v in section.items():
                check_value(f"{key}.{k}", v, field_hint(cfg, k) or options.get(k))


def _hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a config class whose hints cannot be resolved here: its own checks stand
        return {}


def field_hint(cfg, key: str):
    """The declared type of `key` in a config dataclass or a dataclass it holds (`caption.top_p`
    is `CaptionerConfig.decoding.top_p`)."""
    if not dataclasses.is_dataclass(cfg):
        return None
    hints = _hints(type(cfg))
    if key in hints:
        return hints[key]
    for f in dataclasses.fields(cfg):
        hint = field_hint(getattr(cfg, f.name), key)
        if hint is not None:
            return hint
    return None


def check_value(key: str, v, hint) -> None:
    """A value against the type hint of its setting, and a count against its range: one line
    naming `key` (the API checks the mappings it is given with this too)."""
    if hint is None or v is None and _accepts(hint, None):
        return
    if not _accepts(hint, v):
        raise RecaptionError(f"{key} must be {_describe(hint)}, got {v!r}")
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(v, int) and not isinstance(v, bool) and leaf.startswith(AT_LEAST_ONE) and v < 1:
        raise RecaptionError(f"{key} must be at least 1, got {v}")


def _args(hint) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _accepts(hint, v) -> bool:
    for a in _args(hint):
        base = typing.get_origin(a) or a
        if a is type(None):
            ok = v is None
        elif a is bool:
            ok = isinstance(v, bool)
        elif a is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif a is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif a is str:
            ok = isinstance(v, str)
        elif base in (list, tuple):
            ok = isinstance(v, (list, tuple))
        elif base is dict:
            ok = isinstance(v, dict)
        else:
            ok = True  # anything else is the config's own check
        if ok:
            return True
    return False


WORDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false", dict: "a mapping",
         list: "a list", tuple: "a list"}


def _describe(hint) -> str:
    names = [WORDS.get(typing.get_origin(a) or a, getattr(a, "__name__", str(a))) for a in _args(hint)
             if a is not type(None)]
    return " or ".join(dict.fromkeys(names)) + (" or null" if type(None) in _args(hint) else "")


# The annotator groups whose columns a strategy's cut reads (`mixing.strategies.base.COLUMNS`),
# and the group its synthetic caption comes from.
CUT_COLUMNS = {"clip_raw": ("clip_raw",), "clip_synthetic": ("clip_captions",), "blend": ("clip_raw", "sieve")}


def missing_groups(parts: "RecipeParts") -> list[str]:
    """The annotator groups the recipe's mix reads and the recipe does not compute."""
    from recaption import annotators

    kind = parts.mix.kind
    cuts = kind.needs_threshold or parts.mix.threshold is not None or parts.mix.fraction is not None
    columns = list(CUT_COLUMNS.get(kind.column, ()) if cuts else ())
    columns += ["captions"] if kind.needs_synthetic else []
    owner = {c: g for g in annotators.names() for c in annotators.group_columns(g)}
    groups = parts.mix.synthetic_groups  # their own candidates and scores stand for the unnamed group's
    named = {"captions", "clip", "sieve"} if groups else set()
    needed = dict.fromkeys(n for c in columns if c in owner
                           for n in ([f"{owner[c]}.{g}" for g in groups] if owner[c] in named and c != "clip_raw"
                                     else [owner[c]]))
    return [g for g in needed if g not in parts.annotators]


@dataclass
class RecipeParts:
    """A recipe as the configs the stages take."""

    annotators: dict  # annotator name -> config (recaption.annotators), the always-on ones included
    mix: object  # MixConfig, validated

    @property
    def captioner(self):
        """The CaptionerConfig, or None."""
        return self.annotators.get("captions")

    @property
    def clip(self):
        """The main ClipConfig, or None."""
        return self.annotators.get("clip")

    @property
    def sieve(self):
        """The SieveConfig, or None."""
        return self.annotators.get("sieve")

    @property
    def rerank(self) -> tuple:
        """The re-ranking chain (RerankStep), empty without one."""
        r = self.annotators.get("rerank")
        return r.steps if r is not None else ()

    @property
    def asks_for_models(self) -> bool:
        """Whether the recipe computes more than what every pass computes (the filter metrics)."""
        from recaption import annotators

        return any(not annotators.get(n).always for n in self.annotators)


def recipe_parts(r: dict) -> RecipeParts:
    """Build (and so validate) every section of a recipe, before anything runs."""
    from recaption import annotators
    from recaption.dedup import options as dedup_options
    from recaption.mixing.strategies import MixConfig

    configs = annotators.from_recipe(r)
    try:
        removal = dedup_options.from_recipe(r)
        mix = MixConfig(**(r.get("mix") or {}), filters=r.get("filters") or {}, **removal).validate()
    except TypeError as e:
        raise RecaptionError(f"mix: {e}") from None
    embedding = "embedding" in mix.dedup or "embedding" in mix.decontaminate_rules
    clip = configs.get("clip")
    if embedding and not (clip is not None and getattr(clip, "save_embeddings", False)):
        raise RecaptionError("the embedding rule reads the CLIP image embeddings: set clip.save_embeddings: true")
    return RecipeParts(configs, mix)
