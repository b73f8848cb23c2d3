"""The command line's options, grouped by help panel as small dataclasses, and the `verb`
decorator that turns a function taking those groups into a typer command.

Each option is declared once, so every verb shows the same name, help and panel; choices are
built from the package's own constants; a renamed field renames its option and its attribute.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, List, Optional

import typer

from recaption.captioners.base import BACKENDS, QUANTIZE, STRATEGIES as DECODINGS
from recaption.engines import ENGINES, Execution
from recaption.io.pixels import PREPROCESS
from recaption.io.shards import DEFAULT_IMAGE_KEYS
from recaption.mixing import STRATEGIES
from recaption.models import DTYPES

log = logging.getLogger("recaption")
CAP, SCO, INP, RUN, OUT, STO, GLOB = "Captioner", "Scoring", "Input", "Execution", "Output", "Storage", "Logging"


def _choice(name: str, values) -> type[Enum]:
    return Enum(name, [(v, v) for v in values], type=str)


DecodingChoice = _choice("DecodingChoice", DECODINGS)
StrategyChoice = _choice("StrategyChoice", STRATEGIES)
EngineChoice = _choice("EngineChoice", ENGINES)
BackendChoice = _choice("BackendChoice", BACKENDS)
QuantizeChoice = _choice("QuantizeChoice", QUANTIZE)
DtypeChoice = _choice("DtypeChoice", DTYPES)
PreprocessChoice = _choice("PreprocessChoice", PREPROCESS)


def _value(x):
    return x.value if isinstance(x, Enum) else x


def opt(*names, help=None, panel=None, **kw):
    """typer.Option with its help panel."""
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)


# -- option groups ---------------------------------------------------------------------------------
@dataclass
class CaptionerOptions:
    """Which captioner and how it decodes."""

    captioner: Annotated[str, opt("--captioner", "-c", help="preset (see `recaption models`), YAML file, HF id or local path", panel=CAP)] = "blip-base"
    model: Annotated[Optional[str], opt(help="model id or local path replacing the preset's (keeps its decoding)", panel=CAP)] = None
    num_captions: Annotated[Optional[int], opt(help="candidates per image (sample or beam)", panel=CAP)] = None
    decoding: Annotated[Optional[DecodingChoice], opt(help="greedy, beam or sample (nucleus / top-k)", panel=CAP)] = None
    num_beams: Annotated[Optional[int], opt(help="beams for --decoding beam", panel=CAP)] = None
    top_p: Annotated[Optional[float], opt(help="nucleus mass for --decoding sample", panel=CAP)] = None
    top_k: Annotated[Optional[int], opt(help="top-k for --decoding sample", panel=CAP)] = None
    temperature: Annotated[Optional[float], opt(help="sampling temperature", panel=CAP)] = None
    max_new_tokens: Annotated[Optional[int], opt(help="longest caption, in tokens", panel=CAP)] = None
    min_new_tokens: Annotated[Optional[int], opt(help="shortest caption, in tokens", panel=CAP)] = None
    repetition_penalty: Annotated[Optional[float], opt(help="1.0 = none", panel=CAP)] = None
    seed: Annotated[Optional[int], opt(help="same seed, same captions", panel=CAP)] = None
    prompt: Annotated[Optional[str], opt(help="text prompt, removed from the front of each caption", panel=CAP)] = None
    template: Annotated[Optional[str], opt(help="vLLM prompt template (name in prompts/templates or a file); may use {alt_text}", panel=CAP)] = None
    dtype: Annotated[Optional[DtypeChoice], opt(help="auto: bf16 on CUDA and on CPUs with native bf16, else float32", panel=CAP)] = None
    quantize: Annotated[Optional[QuantizeChoice], opt(help="bitsandbytes 8bit or 4bit (needs recaption[quant])", panel=CAP)] = None
    backend: Annotated[Optional[BackendChoice], opt(help="when a model id does not tell which backend serves it", panel=CAP)] = None
    trust_remote_code: Annotated[bool, opt(help="allow model repositories to run their own code (off by default)", panel=CAP)] = False

    def overrides(self) -> dict:
        """Captioner and decoding overrides, unset ones left out."""
        kw = {f.name: _value(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "captioner"}
        kw["strategy"] = kw.pop("decoding")
        if not kw["trust_remote_code"]:
            kw.pop("trust_remote_code")
        return {k: v for k, v in kw.items() if v is not None}


@dataclass
class ScoringOptions:
    """Which CLIP and SIEVE models score."""

    clip_model: Annotated[str, opt(help="open_clip name, hf-hub:org/repo or local-dir:/path", panel=SCO)] = "ViT-B-32"
    clip_pretrained: Annotated[Optional[str], opt(help="pretrained tag or local checkpoint file", panel=SCO)] = "openai"
    no_clip: Annotated[bool, opt(help="skip CLIP scores", panel=SCO)] = False
    sieve_model: Annotated[Optional[str], opt(help="sentence-transformers id or path (default: all-MiniLM-L6-v2, bundled copy when installed)", panel=SCO)] = None
    no_sieve: Annotated[bool, opt(help="skip SIEVE scores", panel=SCO)] = False
    mask: Annotated[str, opt(help="SIEVE mask list: sieve, sieve-long, none, or a file with one phrase a line", panel=SCO)] = "sieve"
    rerank: Annotated[Optional[List[str]], opt(help="re-rank candidates with a chain of CLIP models, one step per option: MODEL[@PRETRAINED]=K keeps the K best (the last K is 1), e.g. --rerank ViT-L-14@openai=5 --rerank RN50x64@openai=1", panel=SCO)] = None
    lang_model: Annotated[Optional[str], opt(help="fastText lid.176 model for caption language (default: the bundled lid.176.ftz; the full lid.176.bin reproduces DataComp exactly)", panel=SCO)] = None

    def clip(self, dtype=None):
        """The CLIP config, or None with --no-clip."""
        if self.no_clip:
            return None
        from recaption.scoring.clip import ClipConfig

        return ClipConfig(model=self.clip_model, pretrained=self.clip_pretrained, dtype=_value(dtype))

    def rerank_steps(self) -> list:
        """The re-ranking chain from the --rerank options."""
        from recaption.scoring.rerank import RerankStep

        return [RerankStep.parse(x) for x in self.rerank or []]

    def sieve(self):
        """The SIEVE config, or None with --no-sieve."""
        if self.no_sieve:
            return None
        from recaption.api import resolve_sieve_model
        from recaption.scoring.sieve import SieveConfig

        return SieveConfig(resolve_sieve_model(self.sieve_model), self.mask)


@dataclass
class InputOptions:
    """How samples are read."""

    image_keys: Annotated[str, opt(help="image fields, in priority order", panel=INP)] = ",".join(DEFAULT_IMAGE_KEYS)
    max_pixels: Annotated[Optional[int], opt(help="decompression-bomb limit in pixels per image", panel=INP)] = None
    preprocess: Annotated[PreprocessChoice, opt(help="fast: decode once, resize and crop for every model as batched uint8 tensor ops (docs/input-path.md); exact: each model's own processor", panel=INP)] = PreprocessChoice("fast")
    gpu_decode: Annotated[bool, opt(help="decode baseline JPEGs on the GPU (nvJPEG) when the models run on CUDA; the rest on the CPU", panel=INP)] = False

    def keys(self) -> tuple[str, ...]:
        """The image fields, in priority order."""
        return tuple(k.strip() for k in self.image_keys.split(",") if k.strip())

    def decoding(self) -> dict:
        """The api's decode arguments."""
        return {"image_keys": self.keys(), "max_pixels": self.max_pixels, "preprocess": _value(self.preprocess),
                "gpu_decode": self.gpu_decode}


@dataclass
class ExecOptions:
    """Where and how the work runs."""

    batch_size: Annotated[Optional[int], opt(help="images per model batch (default: the preset's)", panel=RUN)] = None
    device: Annotated[Optional[str], opt(help="cuda, cuda:1 or cpu (default: cuda when present)", panel=RUN)] = None
    engine: Annotated[EngineChoice, opt(help="local (a worker per GPU, or in-process) or ray", panel=RUN)] = EngineChoice("local")
    workers: Annotated[Optional[int], opt(help="worker processes or Ray actors (default: one per GPU, else one; writing a mix: one per two cores, each with 50,000 samples or more)", panel=RUN)] = None
    threads: Annotated[Optional[int], opt(help="torch threads per worker (default: CPU cores / workers)", panel=RUN)] = None
    ray_address: Annotated[Optional[str], opt(help="Ray cluster address, e.g. auto (--engine ray)", panel=RUN)] = None
    actor_cpus: Annotated[Optional[float], opt(help="CPUs per Ray actor (default 0.5 on CPU, 1 with GPUs)", panel=RUN)] = None
    actor_gpus: Annotated[Optional[float], opt(help="GPUs per Ray actor (default 1 when the cluster has GPUs)", panel=RUN)] = None

    def execution(self, out: "OutputOptions") -> Execution:
        """The engine settings these options give, quiet when the output options are."""
        return Execution(engine=_value(self.engine), workers=self.workers, threads=self.threads, device=self.device,
                         ray_address=self.ray_address, actor_cpus=self.actor_cpus, actor_gpus=self.actor_gpus,
                         quiet=out.quiet)


@dataclass
class OutputOptions:
    """What a run may replace and what it prints."""

    overwrite: Annotated[bool, opt(help="redo work done with other settings; removes only files recaption wrote", panel=OUT)] = False
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


def verb(app: typer.Typer, *, name: str | None = None, epilog: str | None = None, defaults: dict | None = None,
         exclude: tuple[str, ...] = ()):
    """Register `fn` as a command. Parameters annotated with an option-group dataclass become that
    group's options (minus `exclude`, with per-verb `defaults`); `fn` receives the group instance.
    `fn` returns an exit code (0 or None for success)."""
    defaults = defaults or {}

    def deco(fn):
        hints = typing.get_type_hints(fn, include_extras=True)
        params, groups = [], {}
        for pname in inspect.signature(fn).parameters:
            ann = hints[pname]
            if dataclasses.is_dataclass(ann):
                fh = typing.get_type_hints(ann, include_extras=True)
                names = []
                for f in dataclasses.fields(ann):
                    if f.name in exclude:
                        continue
                    params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=fh[f.name],
                                                    default=defaults.get(f.name, f.default)))
                    names.append(f.name)
                groups[pname] = (ann, names)
            else:
                p = inspect.signature(fn).parameters[pname]
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=ann))
        params += _GLOBAL

        def command(**kw):
            setup_logging(kw.pop("debug"), kw.pop("log_file"))
            args = {p: cls(**{n: kw.pop(n) for n in names}) for p, (cls, names) in groups.items()}
            code = fn(**args, **kw)
            if code:
                raise typer.Exit(code)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        app.command(name=name, epilog=epilog)(command)
        return fn

    return deco


def dumps(summary: dict) -> str:
    """The machine-readable summary (no NaN: json stays valid)."""
    return json.dumps(summary, indent=2, default=str, allow_nan=False)
