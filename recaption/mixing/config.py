"""`MixConfig`: how to mix, as settings a notebook builds before anything runs. Its module imports
no numpy or pyarrow (`import recaption as rc; rc.MixConfig(...)` stays light); `validate` and the
strategy objects import what they read when asked."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from recaption.errors import RecaptionError, unknown
from recaption.mixing import CAPTION_KEYS

GROUP_SCORES = ("sieve", "sieve_mean")  # --dedup-keep columns a named group has its own of

if TYPE_CHECKING:
    from recaption.mixing.strategies.base import Strategy


@dataclass
class MixConfig:
    """How to mix: strategy, threshold or fraction, blend weight, filters, output sharding."""

    strategy: str = "threshold"
    threshold: float | None = None
    fraction: float | None = None
    filter_synthetic: bool = False
    alpha: float = 0.5
    samples_per_shard: int = 10000
    keep_sharding: bool = False
    filters: dict = field(default_factory=dict)  # rule -> value, in order (recaption.mixing.filters)
    caption_keys: str = "none"  # captions under top-level json keys: none, best, all (recaption.output.caption_keys)
    # the named caption group the synthetic caption comes from (None: unnamed); several (a list, or
    # "a,b"): per row, the first with a candidate there
    synthetic_group: str | list | None = None
    json_tags: list = field(default_factory=list)  # tag columns as top-level json keys (output.caption_keys.TAGS)
    # duplicates and evaluation-set overlap, removed after the filters (recaption.dedup.options, .removal)
    dedup: dict = field(default_factory=dict)  # rule -> value, in run order: exact, phash (bits), embedding (cosine)
    dedup_keep: str = "first"  # which sample of a group stays: first (input order) or best:COLUMN
    decontaminate: str | None = None  # EVAL: a folder of images and/or shards, or shards as INPUT takes them
    decontaminate_rules: dict = field(default_factory=dict)  # as dedup; exact and phash=8 when EVAL is given alone
    decontaminate_model: str | None = None  # where the pool embeddings' CLIP model loads from here (NAME[@PRETRAINED])

    def validate(self) -> "MixConfig":
        """Check the settings together; one error line naming the option that is wrong. Returns self."""
        from recaption.dedup import options as dedup_options
        from recaption.mixing.filters import normalize
        from recaption.mixing.strategies.base import FLAGS, table

        self.filters = normalize(self.filters)
        self.dedup = dedup_options.normalize(self.dedup)
        self.dedup_keep = self.dedup_keep or "first"
        dedup_options.keep_column(self.dedup_keep)
        if self.dedup_keep != "first" and not self.dedup:
            raise RecaptionError("--dedup-keep chooses among duplicates: give --dedup too")
        self.decontaminate_rules = dedup_options.normalize(self.decontaminate_rules, overlap=True)
        if not self.decontaminate and (self.decontaminate_rules or self.decontaminate_model):
            raise RecaptionError("--decontaminate-rule and --decontaminate-model need --decontaminate EVAL")
        if self.decontaminate and not self.decontaminate_rules:
            self.decontaminate_rules = dict(dedup_options.DEFAULT_OVERLAP)
        if self.decontaminate_model and "embedding" not in self.decontaminate_rules:
            raise RecaptionError("--decontaminate-model is the model of the embedding rule: add "
                                 "--decontaminate-rule embedding=COSINE")
        if self.decontaminate_model:  # a misspelt name would fail after the pool pass, when the model is built
            from recaption.scoring.clip import check_model_name, check_pretrained_tag

            model, _, pretrained = self.decontaminate_model.partition("@")
            check_model_name(model, "--decontaminate-model")
            check_pretrained_tag(model, pretrained, "--decontaminate-model pretrained tag")
        kind = self.kind  # an unknown name is one line listing the registered ones
        if self.threshold is not None and self.fraction is not None:
            raise RecaptionError("give --threshold or --fraction, not both")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise RecaptionError(f"--fraction must be within [0, 1], got {self.fraction}")
        if kind.needs_threshold and self.threshold is None and self.fraction is None:
            raise RecaptionError(f"strategy {self.strategy!r} needs --threshold or --fraction")
        for flag in FLAGS:
            if getattr(self, flag) and flag not in kind.flags:
                takers = " or ".join(f"--strategy {s.name}" for s in table().by_name.values() if flag in s.flags)
                raise RecaptionError(f"--{flag.replace('_', '-')} only applies to {takers}")
        if not 0.0 <= self.alpha <= 1.0:
            raise RecaptionError(f"--alpha must be within [0, 1], got {self.alpha}")
        if self.threshold is not None and not math.isfinite(self.threshold):  # would fail every cut, or none
            raise RecaptionError(f"--threshold must be a finite number, got {self.threshold}")
        if self.samples_per_shard < 1:
            raise RecaptionError("--samples-per-shard must be at least 1")
        if self.caption_keys not in CAPTION_KEYS:
            raise unknown("--caption-keys value", self.caption_keys, CAPTION_KEYS)
        self.json_tags = json_tag_names(self.json_tags)
        if self.synthetic_group is not None:
            self.synthetic_group = synthetic_group_value(self.synthetic_group)
            keep = dedup_options.keep_column(self.dedup_keep)
            if keep in GROUP_SCORES:  # the file's own column is the unnamed group's, not the one the mix scores with
                raise RecaptionError(f"--dedup-keep best:{keep} ranks duplicates by the unnamed caption group's "
                                     f"{keep}, while --synthetic-group {','.join(self.synthetic_groups)} mixes by "
                                     f"the group's own: rank by a column of every row (best:clip_raw) instead")
        return self

    @property
    def synthetic_groups(self) -> tuple[str, ...]:
        """The named caption groups the synthetic caption comes from, in order (empty: the unnamed one)."""
        g = self.synthetic_group
        return () if g is None else (g,) if isinstance(g, str) else tuple(g)

    @property
    def kind(self) -> "Strategy":
        """The strategy as an object (`base.Strategy`): what it needs, cuts on and decides."""
        from recaption.mixing.strategies.base import named

        return named(self.strategy)

    @property
    def threshold_column(self) -> str:
        """Which score a --fraction is taken over."""
        return self.kind.column

    @property
    def score_columns(self) -> tuple[str, ...]:
        """The annotator score column the strategy cuts on, where it is not one of the pool's own
        (the pool pass reads it, and a file without it is an error)."""
        from recaption.mixing.strategies.base import is_extra_column

        return (self.kind.column,) if is_extra_column(self.kind.column) else ()

    @property
    def filter_set(self):
        """The rules as a `recaption.mixing.filters.FilterSet` (empty: none)."""
        from recaption.mixing.filters import FilterSet

        return FilterSet.of(self.filters)

    def __getstate__(self) -> dict:
        # the kinds of its filter rules travel with a pickled config, so a Ray task or worker
        # process evaluates a rule of an annotator registered at run time in the driver
        from recaption.mixing.rules import kinds

        known = kinds()
        names = self.filters if isinstance(self.filters, dict) else {}
        return {**self.__dict__, "__rule_kinds__": {n: known[n] for n in names if n in known}}

    def __setstate__(self, state: dict) -> None:
        from recaption.mixing.rules import remember

        remember(state.pop("__rule_kinds__", {}))
        self.__dict__.update(state)

    @property
    def removes(self) -> bool:
        """Whether duplicates or evaluation-set overlaps are removed before the strategy."""
        return bool(self.dedup or self.decontaminate)

    @property
    def needs_synthetic(self) -> bool:
        """Whether decisions depend on the synthetic caption (else its candidates need not be read)."""
        return self.kind.needs_synthetic


def json_tag_names(given) -> list[str]:
    """`--json-tags` as a list of tag columns (repeated or comma-separated, in order, once each); a
    name that is no tag column is one line naming the nearest ones."""
    from recaption.annotators import tag_columns

    if isinstance(given, str):
        given = [given]
    names = list(dict.fromkeys(n.strip() for g in (given or []) for n in str(g).split(",") if n.strip()))
    known = tag_columns()
    bad = next((n for n in names if n not in known), None)
    if bad is not None:
        raise unknown("--json-tags column", bad, known)
    return names


def synthetic_group_value(given) -> str | list[str]:
    """`--synthetic-group` as recorded: one name as itself (as folders made before lists recorded
    it), several (a list, or comma-separated) as a list in order; a name that is no group name,
    or one listed twice, is one line naming it."""
    from recaption.annotators.groups import check_name

    parts = [given] if isinstance(given, str) else list(given) if isinstance(given, (list, tuple)) else None
    if parts is None or not all(isinstance(p, str) for p in parts):
        raise RecaptionError(f"--synthetic-group takes a group name or a list of them, got {given!r}")
    names = [n.strip() for p in parts for n in p.split(",")]
    if not names:
        raise RecaptionError("--synthetic-group: the list names no group (leave it out for the unnamed one)")
    seen: set[str] = set()
    for n in names:
        try:
            check_name(n)
        except RecaptionError as e:
            raise RecaptionError(f"--synthetic-group: {e}") from None
        if n in seen:
            raise RecaptionError(f"--synthetic-group: group {n!r} is listed twice ({','.join(names)})")
        seen.add(n)
    return names[0] if len(names) == 1 else names
