"""The filter rules' names as data, without numpy: each annotator's rule kinds (`recaption.annotators`)
and the presets of published filters, so the CLI can list them in `--help` cheaply. Evaluating
them is `recaption.mixing.filters`' work."""
from __future__ import annotations

# Presets: the published filters, each rule as its source states it (docs/formats.md#filters).
PRESETS: dict[str, dict] = {
    # DataComp basic filtering (Gadre et al. 2023; baselines/apply_filter.py): English by fastText,
    # more than 2 words, more than 5 characters, original min side >= 200, aspect ratio <= 3.
    "basic": {"english": None, "min-words": 3, "min-chars": 6, "min-side": 200, "max-aspect": 3.0},
    # LAION-5B post-processing (Schuhmann et al. 2022): alt-text of 5 characters or more, image data of
    # 5 KB or more, CLIP cosine >= 0.28 for English (ViT-B/32) and >= 0.26 for other languages (mCLIP).
    "laion-5b": {"min-chars": 5, "min-image-bytes": 5120, "min-clip-raw-en": 0.28, "min-clip-raw-other": 0.26},
}
PRESETS["datacomp-basic"] = PRESETS["basic"]
SOURCES = {"basic": "DataComp", "datacomp-basic": "the same", "laion-5b": "LAION-5B"}  # the presets --help shows


_REMEMBERED: dict = {}  # kinds a pickled mix config brought along (its annotator not registered here)


def kinds() -> dict:
    """Every rule kind, by name (`recaption.annotators.base.RuleKind`), from the registered annotators
    (and any a mix config brought from the process that made it)."""
    from recaption import annotators

    return {**_REMEMBERED, **annotators.rule_kinds()}


def remember(extra: dict) -> None:
    """Rule kinds known where a config was made, for this process (a worker, a Ray task)."""
    _REMEMBERED.update(extra)


def usage() -> str:
    """The --filter help: every rule as it is written, then the presets."""
    rules = ", ".join(k.name if k.value is None else f"{k.name}={k.metavar or _metavar(k.value)}"
                      for k in kinds().values())
    presets = ", ".join(f"{p} ({src})" for p, src in SOURCES.items())
    return (f"drop samples by a rule before the strategy, repeatable: {rules}, or a preset: {presets} "
            "(docs/formats.md#filters)")


def _metavar(t) -> str:
    return {int: "N", float: "X", str: "CODES"}.get(t, "VALUE")
