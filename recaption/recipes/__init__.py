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
from dataclasses import dataclass
from pathlib import Path

import yaml

from recaption.errors import RecaptionError

HERE = Path(__file__).parent
OWN_KEYS = {"description", "source", "filters", "dedup", "decontaminate", "mix", "batch_size",
            "device"}  # the annotators add theirs
SECTION_KEYS = {
    "mix": {"strategy", "threshold", "fraction", "filter_synthetic", "alpha", "samples_per_shard", "keep_sharding",
            "caption_keys"},
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
        raise RecaptionError(f"unknown recipe {name_or_path!r}: not a file, and not one of: "
                             f"{', '.join(list_recipes())}")
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
        recipe_parts(data)
    except RecaptionError as e:
        raise RecaptionError(f"recipe {where}: {e}") from None


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
