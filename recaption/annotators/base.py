"""The annotator contract: one column group of the annotation files (docs/formats.md#annotation-files).

An annotator is declared as data on its class (the columns it writes, the options it takes, what
it reads, the histograms a report draws and the filter rules it offers) and built inside a worker
from a picklable config. Declarations import nothing heavy: the CLI reads them for `--help`.

On the driver (class methods): `configure` turns option values into a config (None: not
computed), `from_recipe` does the same for a recipe and `from_mapping` for a Python caller's
mapping (`recaption.annotate(..., clip={...})`), `settings` says what identifies the results
(a re-run with the same settings resumes, other settings are refused), `check` fails before any
work on what can be known early (a missing model file, a missing extra).

In a worker: `__init__(config, ctx)` builds the models (`ctx.shared` lets annotators share one:
re-ranking reuses the main CLIP model); `image_models` names the models that read pixels, each
with `image_size`, and `pixel_spec()` (the fast decode path) and/or `prepare(images)` (its own
processor); `annotate_batch(batch)` fills the group's columns for one batch of samples, and
`finish_shard(rows)` for the whole shard at once (SIEVE embeds all texts of a shard in one call).

Files beside the annotation file: an annotator may write files of its own for a shard (the clip
group's `--save-embeddings`), in `ctx.ann_dir` (the annotation folder) from `finish_shard`, which
runs before the annotation file is written: rows come in the file's order, so `rows[i]` is the
file's row i. It declares them with `files(settings, ann_dir, name)`; a group recorded with the
wanted settings is redone for a shard while one of its files is missing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

from recaption.declare import Option  # noqa: F401  (part of the contract, re-exported)
from recaption.errors import RecaptionError, unknown

# The arrow types a column may declare, as text, so declarations need no pyarrow.
TYPES = ("string", "bool", "int32", "int64", "uint64", "float32", "float64", "list<string>", "list<float32>",
         "list<int32>", "list<list<float32>>", "binary", "binary[32]")


@dataclass(frozen=True)
class Column:
    """One annotation column: its name, arrow type (as text) and value when not computed."""

    name: str
    type: str
    blank: Any = None  # what the column holds where the group was not computed ([] for lists)

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"column {self.name}: type {self.type!r} is not one of {TYPES}")


def arrow_type(text: str):
    """The pyarrow type a column declares."""
    import pyarrow as pa

    simple = {"string": pa.string(), "bool": pa.bool_(), "int32": pa.int32(), "int64": pa.int64(),
              "uint64": pa.uint64(), "float32": pa.float32(), "float64": pa.float64(), "binary": pa.binary()}
    if text in simple:
        return simple[text]
    if text.startswith("binary[") and text.endswith("]"):  # fixed size: binary[32] is 32 bytes a value
        return pa.binary(int(text[7:-1]))
    assert text.startswith("list<") and text.endswith(">"), text
    return pa.list_(arrow_type(text[5:-1]))


@dataclass(frozen=True)
class Hist:
    """A histogram the report draws of a numeric column (over the annotated samples), on fixed
    bins so per-file counts add up: (low, high, width); values above go in the last bin."""

    name: str
    column: str
    bins: tuple[float, float, float]
    label: str | None = None  # the series name (default: the column)
    scale: float = 1.0  # values are divided by this (bytes -> KB)


@dataclass(frozen=True)
class RuleKind:
    """A filter rule an annotator offers for `mix --filter NAME[=VALUE]` (docs/formats.md#filters).

    `op` says what the rule tests: `min` (the column's value >= VALUE), `max` (<= VALUE), `in`
    (one of the comma-separated VALUE codes; `fixed` gives them for a rule without a value), or
    `custom`: `test` ("module:function", or the function) is called as `test(table, value)` on
    an annotation table holding the `needs` columns and returns numpy arrays `(fails, lacks,
    measured)` per row (the row fails the rule; lacks what it tests; its value, for drop reasons,
    where `sign` says how a failing value compares with the limit). A custom rule without its
    test is refused here, where it is declared. A row without a value `lacks` what the rule
    tests and is dropped with that reason. `group` is the column group a file must hold for the
    rule to apply (None: the rule reads fixed columns only)."""

    name: str
    needs: tuple[str, ...]
    value: type | None  # int, float, str or None (no value)
    lacks: str
    help: str
    op: str = "custom"
    column: str | None = None
    group: str | None = None
    fixed: str | None = None
    metavar: str | None = None  # how --help shows the value (default: N, X or CODES by type)
    test: Any = None  # custom: "module:function" or the function, (table, value) -> (fails, lacks, measured)
    sign: str = "<"  # custom: how a failing value compares with the limit in a drop reason

    def __post_init__(self):
        if self.op not in RULE_OPS:
            raise RecaptionError(f"rule {self.name}: op must be one of {', '.join(RULE_OPS)}, got {self.op!r}")
        if self.op != "custom" and self.column is None:
            raise RecaptionError(f"rule {self.name}: a {self.op} rule names its column")
        if self.op == "custom" and self.test is None:
            raise RecaptionError(f"rule {self.name}: a custom rule names its test "
                                 "(test=\"module:function\", called as test(table, value))")
        if self.op != "custom" and self.test is not None:
            raise RecaptionError(f"rule {self.name}: only a custom rule takes a test "
                                 f"(a {self.op} rule tests {self.column})")

    def tester(self) -> Callable:
        """The custom rule's test function, loaded."""
        from recaption.registry import load

        return load(self.test, f"the test of filter rule {self.name!r}") if isinstance(self.test, str) else self.test


RULE_OPS = ("min", "max", "in", "custom")


@dataclass
class RunContext:
    """What every annotator of one pass shares: the batch size (sampling is seeded per batch) and
    the input path (the exact processors' pixels differ slightly from the fast path's)."""

    batch_size: int = 64
    preprocess: str = "fast"


class Batch(Protocol):
    """One batch of a shard as an annotator sees it (`recaption.stages.annotate` makes it)."""

    shard: str  # the input shard's name
    rows: list[dict]  # rows of the batch's samples, in order (a sample whose image failed to decode is an error row)
    records: list  # their read records (`recaption.io.shards.Sample`: key, raw_caption, meta, image bytes)

    def live(self) -> list[int]:
        """Indexes of the rows whose image decoded and that are still `ok`."""

    def inputs(self, model, idx: list[int]) -> list:
        """Per-sample inputs of an image model for rows `idx` (uint8 pixels or PIL images)."""

    def batched(self, model, idx: list[int]):
        """The model's inputs for rows `idx` as one batch, when they are exactly the batch's decoded
        samples (else None: use `inputs`)."""

    def source_size(self, i: int) -> tuple[int, int] | None:
        """The stored image's (width, height) of row i, None when it did not decode."""

    def timer(self, name: str):
        """A context manager adding its seconds to the named stage of the summary's timings."""


@dataclass
class WorkerContext:
    """What an annotator is built with in a worker: the device, models shared by key, and the
    annotation folder the shards' files go to (for files an annotator writes beside them)."""

    device: str | None = None
    models: dict = field(default_factory=dict)
    ann_dir: str | None = None

    def shared(self, key, build: Callable[[], Any]):
        """One model per key in a worker, whichever annotator asks first builds it."""
        if key not in self.models:
            self.models[key] = build()
        return self.models[key]


class Annotator:
    """One column group: its declaration (class attributes) and its work in a worker."""

    name: ClassVar[str] = ""  # the group name recorded in files
    # `captioner` (offered by `caption`) or `scorer` (by `score`); `annotate` offers both
    kind: ClassVar[str] = "scorer"
    columns: ClassVar[tuple[Column, ...]] = ()
    after: ClassVar[tuple[str, ...]] = ()  # groups its values are computed from: new values there make it stale
    reads_images: ClassVar[bool] = True  # needs the shard's samples (False: the file's texts suffice)
    always: ClassVar[bool] = False  # computed by every pass (cheap): on without being asked
    options: ClassVar[tuple[Option, ...]] = ()
    recipe_keys: ClassVar[tuple[str, ...]] = ()  # recipe sections it reads (default: its name)
    hists: ClassVar[tuple[Hist, ...]] = ()
    rules: ClassVar[tuple[RuleKind, ...]] = ()
    timer: ClassVar[str | None] = ""  # the timing name of annotate_batch (default: its name; None: it times itself)
    add_hint: ClassVar[str] = ""  # the command that adds the group to an annotation folder
    # its columns are NSFW probabilities: the report's grid of their highest samples is blurred
    sensitive: ClassVar[bool] = False
    # settings keys added after folders were first written: a recorded group lacking one resumes
    # with a warning (its value unknown, not matched) and is redone with --overwrite
    added_settings: ClassVar[tuple[str, ...]] = ()

    # -- on the driver ------------------------------------------------------------------------
    @classmethod
    def configure(cls, values: dict, others: dict) -> Any | None:
        """The config from option values (every option of the verb, by name), or None when off.
        `others` holds the configs of the annotators configured before (registry order).
        By default: on when its first bool option is set (or `always`), config = its option values."""
        mine = {o.name: values.get(o.name, o.default) for o in cls.options}
        switch = next((o for o in cls.options if o.type is bool), None)
        if not cls.always and switch is not None and not mine.get(switch.name):
            return None
        return {k: v for k, v in mine.items() if switch is None or k != switch.name}

    @classmethod
    def from_recipe(cls, recipe: dict, others: dict) -> Any | None:
        """The config from a recipe: its section (`name: {option: value}`, `name: true`, or null)."""
        section = recipe.get(cls.name)
        if not section and not cls.always:
            return None
        if section is True or not section:
            section = {}
        if not isinstance(section, dict):
            raise RecaptionError(f"{cls.name} must be a mapping of its options, true, or null")
        names = {o.name for o in cls.options if o.type is not bool}
        bad = set(section) - names
        if bad:
            raise unknown(f"{cls.name} key", sorted(bad)[0], sorted(names))
        switch = {o.name: True for o in cls.options if o.type is bool}
        return cls.configure({**switch, **section}, others)

    @classmethod
    def from_mapping(cls, values, others: dict) -> Any | None:
        """The config from what a Python caller gives for this annotator by name (`clip={"model":
        ...}`): what its recipe section holds; True or an empty mapping: its defaults. An
        annotator reading several recipe sections (`recipe_keys`) overrides this."""
        return cls.from_recipe({cls.name: True if values is True or values == {} else values}, others)

    @classmethod
    def default(cls) -> Any | None:
        """The config of an `always` annotator nobody configured (None for the others)."""
        return cls.configure({}, {}) if cls.always else None

    @classmethod
    def settings(cls, config, run: RunContext) -> dict:
        """What identifies this group's results: the same settings resume, others are refused."""
        return dict(config) if isinstance(config, dict) else {}

    @classmethod
    def check(cls, config) -> None:
        """Fail, before anything is created, on what can be known early (missing files, extras)."""

    @classmethod
    def for_folder(cls, config, ann_dir: str):
        """The config as it applies to annotation folder `ann_dir`, refusing before any work what the
        folder cannot give (a head over saved embeddings needs them, made by its CLIP); unchanged by
        default."""
        return config

    @classmethod
    def files(cls, settings: dict, ann_dir: str, name: str) -> list[str]:
        """The files this group writes beside annotation file `ann_dir/NAME.parquet` when computed
        with `settings` (none by default); while one is missing the group is not finished there."""
        return []

    # -- in a worker ----------------------------------------------------------------------------
    def __init__(self, config, ctx: WorkerContext):
        self.config, self.ctx = config, ctx

    def image_models(self) -> dict[str, Any]:
        """The models that read pixels, by a name of the annotator's choosing."""
        return {}

    def annotate_batch(self, batch: Batch) -> None:
        """Fill this group's columns of `batch.rows`."""

    def finish_shard(self, rows: list[dict]) -> None:
        """Fill this group's columns once the whole shard was read (rows of every sample)."""


def recipe_section(recipe: dict, name: str, keys: set[str]) -> dict | None:
    """A recipe's section for an annotator: None when absent or null, else a mapping of known keys
    (one line naming the section and the known keys otherwise)."""
    section = recipe.get(name)
    if section is True:  # on, with its defaults
        return {}
    if not section:
        return None
    if not isinstance(section, dict):
        raise RecaptionError(f"{name} must be a mapping, true or null")
    bad = set(section) - keys
    if bad:
        raise unknown(f"{name} key", sorted(bad)[0], sorted(keys))
    return dict(section)


def model_identity(ref: str | None) -> str | None:
    """How a model is recorded in a group's settings: the bundled MiniLM by its hub id (so another
    install of the same package resumes), other local paths made absolute, ids as given."""
    from recaption.scoring.sieve import DEFAULT_EMBEDDER, default_sieve_model

    if not ref or "://" in ref or not os.path.exists(ref):
        return ref
    p = os.path.realpath(ref)
    bundled = default_sieve_model()
    return DEFAULT_EMBEDDER if bundled != DEFAULT_EMBEDDER and p == os.path.realpath(bundled) else p


def check_model_path(ref: str | None, what: str) -> None:
    """A model given as a local path must exist; said once, before any work."""
    if ref and ref.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(ref)):
        raise RecaptionError(f"{what} not found: {ref}")


def on_device(cfg, device: str | None):
    """A config with the worker's device where it names none (the caller's config is not changed)."""
    import dataclasses

    return cfg if cfg is None or cfg.device or not device else dataclasses.replace(cfg, device=device)


def is_pixels(x) -> bool:
    """A uint8 pixel batch from the fast path (rather than inputs a processor prepared)."""
    return x is not None and str(getattr(x, "dtype", "")) == "torch.uint8"


def prepared(batch, model, idx: list[int]):
    """An image model's input for rows `idx`: the batch's own where they are exactly its decoded
    samples, else the model's `prepare` over those rows' inputs."""
    x = batch.batched(model, idx)
    return model.prepare(batch.inputs(model, idx)) if x is None else x
