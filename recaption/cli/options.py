"""The command line's options, grouped by help panel as small dataclasses, and the `verb`
decorator that turns a function taking those groups into a typer command.

Each option is declared once, so every verb shows the same name, help and panel; choices are
built from the package's own constants; a renamed field renames its option and its attribute.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import logging
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, List, Optional

import typer

from recaption.engines import ENGINES, Execution
from recaption.io.pixels import PREPROCESS
from recaption.io.shards import (DEFAULT_IMAGE_KEYS, DEFAULT_MAX_JSON_BYTES, DEFAULT_MAX_JSON_DEPTH,
                                 DEFAULT_MAX_JSON_INT_DIGITS, DEFAULT_MAX_MEMBER_BYTES)
from recaption.mixing import CAPTION_KEYS, STRATEGIES

log = logging.getLogger("recaption")
CAP, SCO, INP, RUN, OUT, STO, GLOB = "Captioner", "Scoring", "Input", "Execution", "Output", "Storage", "Logging"


def _choice(name: str, values) -> type[Enum]:
    """A choice type; from a registry (anything with `names()`), one whose values are read again
    each time a command is built (`_live`), so an entry registered at run time is a choice."""
    names = values.names() if hasattr(values, "names") else values
    e = Enum(name, [(v, v) for v in names], type=str)
    if hasattr(values, "names"):
        e._source = values
    return e


StrategyChoice = _choice("StrategyChoice", STRATEGIES)
CaptionKeysChoice = _choice("CaptionKeysChoice", CAPTION_KEYS)
EngineChoice = _choice("EngineChoice", ENGINES)
PreprocessChoice = _choice("PreprocessChoice", PREPROCESS)


def _enum_of(ann) -> type[Enum] | None:
    """The choice type inside an annotation (`Optional[...]`, `List[...]`), if there is one."""
    while typing.get_args(ann) and not (isinstance(ann, type) and issubclass(ann, Enum)):
        ann = next((a for a in typing.get_args(ann) if a is not type(None)), None)
    return ann if isinstance(ann, type) and issubclass(ann, Enum) else None


def _named_choices(ann, name: str):
    """A choice option whose unknown value is the project's one error line (`errors.unknown`:
    the nearest choices, then all) instead of the parser's own: a registry's choices are named
    by its kind ("unknown strategy ..."), a fixed list's by the flag ("unknown --caption-keys value ...")."""
    if typing.get_origin(ann) is not Annotated:
        return ann
    base, *meta = typing.get_args(ann)
    choice = _enum_of(base)
    if choice is None:
        return ann
    source = getattr(choice, "_source", None)
    fresh = []
    for m in meta:
        if isinstance(m, typer.models.ParameterInfo) and m.parser is None:
            flag = next((d for d in (m.param_decls or ()) if d.startswith("--")), "--" + name.replace("_", "-"))
            m = copy.copy(m)
            m.parser = _ChoiceParser(choice, getattr(source, "kind", None) or f"{flag} value")
        fresh.append(m)
    return Annotated[(base, *fresh)]


class _ChoiceParser:
    """str -> the choice it names, or RecaptionError in the one form (raised through the parser:
    typer lets anything but a ValueError out as it is, so `main` prints it and exits 2)."""

    def __init__(self, choice: type[Enum], what: str):
        self.choice, self.what = choice, what

    def __call__(self, value):
        if isinstance(value, self.choice):
            return value
        value = getattr(value, "value", value)
        try:
            return self.choice(value)
        except ValueError:
            from recaption.errors import unknown

            raise unknown(self.what, value, [m.value for m in self.choice]) from None


def _live(ann, default):
    """(annotation, default) with a registry's choices as they are now (`_choice`)."""
    if typing.get_origin(ann) is not Annotated:
        return ann, default
    base, *meta = typing.get_args(ann)
    source = getattr(base, "_source", None) if isinstance(base, type) and issubclass(base, Enum) else None
    if source is None:
        return ann, default
    fresh = _choice(base.__name__, source)
    if isinstance(default, Enum):
        default = fresh(default.value)
    return Annotated[(fresh, *meta)], default


def _value(x):
    if isinstance(x, list):
        return [_value(v) for v in x]
    return x.value if isinstance(x, Enum) else x


def _flags_show_no_type() -> None:
    """A flag takes no value, so --help shows no type for it: typer's rich help asks every option
    for `display_type_rich`, which says `<bool>` for a flag (--help itself included)."""
    try:
        from typer.core import TyperOption
    except ImportError:  # a typer without it renders flags without a type already
        return
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_flags_untyped", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return shown(self, ctx)

    display_type_rich._flags_untyped = True
    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()


def opt(*names, help=None, panel=None, **kw):
    """typer.Option with its help panel."""
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)


# -- option groups ---------------------------------------------------------------------------------
class AnnotatorOptions(dict):
    """The options of the registered annotators a verb offers (`recaption.annotators`), as
    {option name: value}: each annotator declares its own, so a new one needs no CLI code."""

    kinds: tuple[str, ...] = ("captioner", "scorer")

    def configs(self) -> dict:
        """{annotator: config} for these values (the off ones left out, the always-on ones added)."""
        from recaption import annotators

        return annotators.configure(dict(self), self.kinds)


class CaptionerOptions(AnnotatorOptions):
    """The captioner's options (the `caption` verb)."""

    kinds = ("captioner",)


class ScoringOptions(AnnotatorOptions):
    """The scorers' options (the `score` verb)."""

    kinds = ("scorer",)


def _annotator_params(group: type[AnnotatorOptions], exclude, defaults) -> list[inspect.Parameter]:
    """Typer parameters for the options of the annotators of `group`'s kinds, in registry order."""
    from recaption import annotators

    return [_param(o, CAP if a.kind == "captioner" else SCO, defaults)
            for a in annotators.classes() if a.kind in group.kinds for o in a.options if o.name not in exclude]


def _param(o, panel: str, defaults: dict) -> inspect.Parameter:
    """The typer parameter of a declared option (`recaption.declare.Option`)."""
    choices = o.choice_list()
    source = o.choices if hasattr(o.choices, "names") else choices  # a registry's errors name its kind
    base = _choice(f"{o.name.title().replace('_', '')}Choice", source) if choices else o.type
    default = defaults.get(o.name, o.default)
    if choices and default is not None and not o.multiple:
        default = base(default)
    if o.multiple:
        t = Optional[List[base]]
    elif o.type is not bool and default is None:
        t = Optional[base]
    else:
        t = base
    ann = _named_choices(Annotated[t, opt(*(o.flags or (o.flag,)), help=o.help, panel=panel)], o.name)
    return inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)


@dataclass
class InputOptions:
    """How samples are read."""

    image_keys: Annotated[str, opt(help="image fields, in priority order", panel=INP)] = ",".join(DEFAULT_IMAGE_KEYS)
    max_pixels: Annotated[Optional[int], opt(help="decompression-bomb limit in pixels per image", panel=INP)] = None
    preprocess: Annotated[PreprocessChoice, opt(help="fast: decode once, resize and crop for every model as batched uint8 tensor ops (docs/input-path.md); exact: each model's own processor", panel=INP)] = PreprocessChoice("fast")
    gpu_decode: Annotated[bool, opt("--gpu-decode", help="decode baseline JPEGs on the GPU (nvJPEG) when the models run on CUDA; the rest on the CPU", panel=INP)] = False

    max_member_bytes: Annotated[int, opt(help="a sample with a tar member larger than this is an error row, its member never read (gzipped shards too)", panel=INP)] = DEFAULT_MAX_MEMBER_BYTES
    max_json_bytes: Annotated[int, opt(help="a sample whose json member is larger is an error row", panel=INP)] = DEFAULT_MAX_JSON_BYTES
    max_json_depth: Annotated[int, opt(help="a sample whose json nests arrays and objects deeper is an error row (at most 500)", panel=INP)] = DEFAULT_MAX_JSON_DEPTH
    max_json_int_digits: Annotated[int, opt(help="a sample whose json holds an integer with more digits is an error row", panel=INP)] = DEFAULT_MAX_JSON_INT_DIGITS

    def limits(self):
        """What one sample may cost to read (`recaption.io.shards.ReadLimits`)."""
        from recaption.io.shards import ReadLimits

        return ReadLimits(self.max_member_bytes, self.max_json_bytes, self.max_json_depth, self.max_json_int_digits)

    def keys(self) -> tuple[str, ...]:
        """The image fields, in priority order."""
        return tuple(k.strip() for k in self.image_keys.split(",") if k.strip())

    def decoding(self, batch_size: int | None = None):
        """The api's decode options (`recaption.stages.inputs.DecodeOptions`)."""
        from recaption.stages.inputs import DecodeOptions

        return DecodeOptions(image_keys=self.keys(), max_pixels=self.max_pixels, batch_size=batch_size,
                             preprocess=_value(self.preprocess), gpu_decode=self.gpu_decode, limits=self.limits())


@dataclass
class ExecOptions:
    """Where and how the work runs: what every engine takes, then each engine's own options
    (`extra`, declared by the engine modules of `recaption.engines`)."""

    batch_size: Annotated[Optional[int], opt(help="images per model batch (default: the preset's)", panel=RUN)] = None
    device: Annotated[Optional[str], opt(help="cuda, cuda:1 or cpu (default: cuda when present)", panel=RUN)] = None
    engine: Annotated[EngineChoice, opt(help="local (a worker per GPU, or in-process) or ray", panel=RUN)] = EngineChoice("local")
    workers: Annotated[Optional[int], opt(help="worker processes or Ray actors (default: one per GPU, else one; mix writes: one per two cores)", panel=RUN)] = None
    threads: Annotated[Optional[int], opt(help="torch threads per worker (default: CPU cores / workers)", panel=RUN)] = None

    @staticmethod
    def extra_options() -> list:
        """Every registered engine's own options."""
        from recaption.engines import ENGINES, engine

        return [o for name in ENGINES.names() for o in engine(name).OPTIONS]

    def execution(self, out: "OutputOptions") -> Execution:
        """The engine settings these options give, quiet when the output options are."""
        from recaption.engines import option_defaults

        defaults = option_defaults()  # an option left at its default is not given, whatever its type
        given = {k: v for k, v in getattr(self, "extra", {}).items() if v is not None and v != defaults.get(k)}
        return Execution(engine=_value(self.engine), workers=self.workers, threads=self.threads, device=self.device,
                         quiet=out.quiet, options=given)


@dataclass
class OutputOptions:
    """What a run may replace and what it prints."""

    overwrite: Annotated[bool, opt("--overwrite", help="redo work done with other settings; removes only files recaption wrote", panel=OUT)] = False
    quiet: Annotated[bool, opt("--quiet", "-q", help="no progress bar or progress log lines", panel=OUT)] = False
    json: Annotated[bool, opt("--json", help="print the summary as JSON instead of a table", panel=OUT)] = False


@dataclass
class StorageOptions:
    """How remote paths (s3://, gs://, https://) are reached."""

    storage_options: Annotated[Optional[str], opt(help="fsspec options for every remote read and write: JSON text or a JSON/YAML file, e.g. '{\"endpoint_url\": \"https://minio:9000\"}' or '{\"s3\": {\"profile\": \"lab\"}}'", panel=STO)] = None


# -- the decorator ---------------------------------------------------------------------------------
STATE = {"debug": False, "log_file": None}
_HANDLER_MARK = "_recaption_handler"


class _StderrHandler(logging.StreamHandler):
    """stderr, printed above a live progress bar instead of into its line."""

    def emit(self, record):
        from recaption.progress import active_console

        console = active_console()
        if console is None:
            return super().emit(record)
        try:
            console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


def setup_logging(debug: bool = False, log_file: str | None = None) -> None:
    """One stderr handler (on the root logger): recaption's own log from INFO (DEBUG with --debug),
    other libraries' from WARNING; a log file given before or after the verb; idempotent."""
    STATE["debug"] = STATE["debug"] or debug
    log_file = STATE["log_file"] = log_file or STATE.get("log_file")
    root = logging.getLogger()
    for lg in (logging.getLogger("recaption"), root):
        for h in [h for h in lg.handlers if getattr(h, _HANDLER_MARK, False)]:
            lg.removeHandler(h)
            h.close()
    level = logging.DEBUG if STATE["debug"] else logging.INFO
    ours = _OursFrom(level)
    err = _StderrHandler()
    err.setFormatter(logging.Formatter("recaption: %(levelname)s %(message)s"))
    err.addFilter(ours)
    setattr(err, _HANDLER_MARK, True)
    root.addHandler(err)
    logging.getLogger("recaption").setLevel(level)
    root.setLevel(level)
    if log_file:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        fh.addFilter(ours)
        setattr(fh, _HANDLER_MARK, True)
        root.addHandler(fh)


class _OursFrom(logging.Filter):
    """recaption's records from `level`; everyone else's from WARNING (DEBUG when debugging)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record) -> bool:
        if record.name == "recaption" or record.name.startswith("recaption."):
            return record.levelno >= self.level
        return record.levelno >= (logging.DEBUG if self.level == logging.DEBUG else logging.WARNING)


_GLOBAL = [
    inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False,
                      annotation=Annotated[bool, opt("--debug", help="show tracebacks and debug log lines", panel=GLOB)]),
    inspect.Parameter("log_file", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Optional[str], opt("--log-file", help="also write the log to this file", panel=GLOB)]),
]


def _live_help(ann):
    """An annotation whose option help is a function, with the help it gives now (what the
    registries hold when the command is built: a filter rule an annotator registered at run time)."""
    if typing.get_origin(ann) is not Annotated:
        return ann
    base, *meta = typing.get_args(ann)
    fresh = []
    for m in meta:
        if callable(getattr(m, "help", None)):
            m = copy.copy(m)
            m.help = m.help()
        fresh.append(m)
    return Annotated[(base, *fresh)]


_COMMANDS: list = []  # (command, signature builder): rebuilt by `refresh` when annotators change


def verb(app: typer.Typer, *, name: str | None = None, epilog: str | None = None, defaults: dict | None = None,
         exclude: tuple[str, ...] = ()):
    """Register `fn` as a command. Parameters annotated with an option-group dataclass become that
    group's options (minus `exclude`, with per-verb `defaults`); `fn` receives the group instance.
    A parameter annotated with an `AnnotatorOptions` class gets the options of the registered
    annotators of its kinds, as a dict. `fn` returns an exit code (0 or None for success)."""
    defaults = defaults or {}

    def deco(fn):
        hints = typing.get_type_hints(fn, include_extras=True)
        groups: dict = {}

        def build():
            params = []
            groups.clear()
            for pname in inspect.signature(fn).parameters:
                ann = hints[pname]
                if isinstance(ann, type) and issubclass(ann, AnnotatorOptions):
                    extra = _annotator_params(ann, exclude, defaults)
                    params += extra
                    groups[pname] = (ann, [p.name for p in extra], [])
                elif dataclasses.is_dataclass(ann):
                    fh = typing.get_type_hints(ann, include_extras=True)
                    names = []
                    for f in dataclasses.fields(ann):
                        if f.name in exclude:
                            continue
                        ann_f, default = _live(fh[f.name], defaults.get(f.name, f.default))
                        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                                        annotation=_named_choices(ann_f, f.name), default=default))
                        names.append(f.name)
                    extra = [_param(o, RUN, defaults) for o in ann.extra_options() if o.name not in exclude] \
                        if hasattr(ann, "extra_options") else []
                    params += extra
                    groups[pname] = (ann, names, [p.name for p in extra])
                else:
                    p = inspect.signature(fn).parameters[pname]
                    ann_p, default = _live(_live_help(ann), p.default)
                    params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=_named_choices(ann_p, pname),
                                            default=default))
            params += _GLOBAL
            command.__signature__ = inspect.Signature(params)
            command.__annotations__ = {p.name: p.annotation for p in params}

        def command(**kw):
            setup_logging(kw.pop("debug"), kw.pop("log_file"))
            args = {}
            for p, (cls, names, extra) in groups.items():
                if issubclass(cls, AnnotatorOptions):
                    args[p] = cls({n: _value(kw.pop(n)) for n in names})
                    continue
                args[p] = cls(**{n: kw.pop(n) for n in names})
                if extra:
                    args[p].extra = {n: _value(kw.pop(n)) for n in extra}
            code = fn(**args, **kw)
            if code:
                raise typer.Exit(code)

        build()
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        _COMMANDS.append((command, build, _registries_now()))
        app.command(name=name, epilog=epilog)(command)
        return fn

    return deco


def _registries_now() -> tuple:
    """What the commands' options are built from: every registry's names and change count."""
    from recaption import annotators
    from recaption.captioners.base import BACKENDS

    return tuple((tuple(r.names()), r.changes) for r in (annotators.REGISTRY, STRATEGIES, ENGINES, BACKENDS))


def refresh() -> None:
    """Rebuild the verbs' options where a registry changed since they were built (an annotator,
    strategy, engine or backend registered at run time gets its options and choices like the
    built-in ones)."""
    now = _registries_now()
    for i, (command, build, seen) in enumerate(_COMMANDS):
        if seen != now:
            build()
            _COMMANDS[i] = (command, build, now)


def dumps(summary: dict) -> str:
    """The machine-readable summary (no NaN: json stays valid)."""
    return json.dumps(summary, indent=2, default=str, allow_nan=False)
