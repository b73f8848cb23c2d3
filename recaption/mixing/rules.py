"""The filter rules' names as data, without numpy: each annotator's rule kinds (`recaption.annotators`)
and the presets of published filters, so the CLI can list them in `--help` cheaply. Evaluating
them is `recaption.mixing.filters`' work."""
from __future__ import annotations

from recaption.errors import RecaptionError
from recaption.registry import Registry

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


class RuleKinds(Registry):
    """Filter-rule kinds by name (`recaption.annotators.base.RuleKind`): every rule the registered
    annotators declare (kept in step with the annotator registry), the kinds a pickled mix config
    brought from the process that made it, and any registered directly (`RULE_KINDS.register(
    name, kind)`, or an entry point of the `recaption.rules` group naming a RuleKind)."""

    def __init__(self):
        super().__init__("filter rule", "recaption.rules", _check_kind)
        self._from_annotators: dict[str, str] = {}  # rule -> the annotator declaring it
        self._synced = None

    def _sync(self) -> None:
        from recaption import annotators

        now = annotators.REGISTRY.changes
        if self._synced == now:
            return
        self._synced = now
        declared = {r.name: (a.name, r) for a in annotators.classes() for r in a.rules}
        for name in [n for n in self._from_annotators if n not in declared]:
            self._from_annotators.pop(name)
            if name in self._entries:
                super().unregister(name)
        for name, (owner, kind) in declared.items():
            if self._from_annotators.get(name) == owner and self._entries.get(name) is kind:
                continue
            if name in self._entries and self._from_annotators.get(name) not in (None, owner):
                raise RecaptionError(f"annotator {owner}: filter rule {name!r} is "
                                     f"{self._from_annotators[name]}'s already")
            self.register(name, kind, replace=True)
            self._from_annotators[name] = owner

    def names(self) -> list[str]:
        """Every rule kind's name: the annotators' in registry order, then the others."""
        self._sync()
        return super().names()

    def __contains__(self, name) -> bool:
        self._sync()
        return super().__contains__(name)

    def get(self, name: str):
        """The rule kind `name` (an unknown one: the nearest names)."""
        self._sync()
        return super().get(name)


def _check_kind(name: str, kind) -> None:
    from recaption.annotators.base import RuleKind

    if not isinstance(kind, RuleKind) or kind.name != name:
        raise RecaptionError(f"filter rule {name!r}: {kind!r} is not a RuleKind named {name!r}")


RULE_KINDS = RuleKinds()


def kinds() -> dict:
    """Every rule kind, by name (`recaption.annotators.base.RuleKind`), from the registered annotators
    (and any a mix config brought from the process that made it)."""
    return {n: RULE_KINDS.get(n) for n in RULE_KINDS.names()}


def remember(extra: dict) -> None:
    """Rule kinds known where a config was made, for this process (a worker, a Ray task)."""
    for name, kind in extra.items():
        if name not in RULE_KINDS:
            RULE_KINDS.register(name, kind)


def usage() -> str:
    """The --filter help: every rule as it is written, then the presets."""
    rules = ", ".join(k.name if k.value is None else f"{k.name}={k.metavar or _metavar(k.value)}"
                      for k in kinds().values())
    presets = ", ".join(f"{p} ({src})" for p, src in SOURCES.items())
    return (f"drop samples by a rule before the strategy, repeatable: {rules}, or a preset: {presets} "
            "(docs/formats.md#filters)")


def _metavar(t) -> str:
    return {int: "N", float: "X", str: "CODES"}.get(t, "VALUE")
