"""Executors: map a per-item stage (annotate one shard, write one output shard) over work items,
and a function over annotation files (the mix's pool pass and plan).

Engines are a registry of modules (`ENGINES`, a `recaption.registry.Registry`: name -> module,
"module" imported when first used; `ENGINES.register("NAME", "package.module")`, or an entry point
of the `recaption.engines` group). An engine module provides:

    OPTIONS                     its own command-line options (`recaption.declare.Option`), read
                                from `Execution.options`; the shared ones are Execution's fields.
                                An option left at its declared default (None, False, 0...) is
                                not given: another engine's option at its default is no error
    validate(ex)                refuse what it cannot honour, before anything is created
                                (missing extra, impossible option values)
    preflight(ex, cpu_only)     check the resources asked for (a Ray cluster: connect, compare)
    run(stage, items, ex, *, desc, count_of, cpu_only) -> [report dict]
                                run a stage (`recaption.stages.Stage`) over JSON-able items,
                                copying the process's storage options into every worker
    mapper(ex)                  how a function of one annotation file is mapped over many:
                                an object with `map(fn, items)` yielding results in item order,
                                and `in_process` (True: a column cache may be shared)

Every engine runs the same stage objects and so writes the same files; they differ only in where
the stage runs. Every worker runs torch with the same number of threads for a given command on
either engine, so the numbers computed do not depend on the engine. Engines know no model and no
mixing: they sit below both (tests/test_layers.py).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from recaption.errors import RecaptionError, unknown
from recaption.io.decode import cpu_cores  # noqa: F401  (re-exported: engines share cores out)
from recaption.registry import Registry

CONTRACT = ("OPTIONS", "validate", "preflight", "run", "mapper")


def _check(name: str, mod) -> None:
    missing = [a for a in CONTRACT if not hasattr(mod, a)]
    if missing:
        raise RecaptionError(f"engine {name!r} ({getattr(mod, '__name__', mod)}) lacks {', '.join(missing)} "
                             "(the contract in recaption/engines/__init__.py)")


# name -> module providing OPTIONS, validate, preflight, run, mapper (see the module docstring)
ENGINES = Registry("engine", "recaption.engines", _check)
ENGINES.register("local", "recaption.engines.local", builtin=True)
ENGINES.register("ray", "recaption.engines.ray", builtin=True)


def engine(name: str):
    """The module of a registered engine (an unknown name: the nearest ones)."""
    return ENGINES.get(name)


def option_owners() -> dict[str, str]:
    """Each engine-specific option's name -> the engine that takes it."""
    return {o.name: name for name in ENGINES.names() for o in engine(name).OPTIONS}


def option_defaults() -> dict:
    """Each engine-specific option's name -> its declared default (what "not given" means)."""
    return {o.name: o.default for name in ENGINES.names() for o in engine(name).OPTIONS}


@dataclass
class Execution:
    """Where and how stages run (the Execution options of every verb): what every engine takes,
    and the chosen engine's own options in `options` (e.g. {"ray_address": "auto"})."""

    engine: str = "local"
    # worker processes/actors (default: one per GPU, else one; mix writes: local.cpu_workers)
    workers: int | None = None
    threads: int | None = None  # torch threads per worker (default: cores // workers)
    device: str | None = None
    quiet: bool = False
    log_every: float = 30.0  # seconds between progress log lines when stderr is not a terminal
    options: dict = field(default_factory=dict)

    def validate(self) -> "Execution":
        """Refuse settings no engine can honour, another engine's options, and what the chosen
        engine refuses (a missing Ray); returns self."""
        mod = engine(self.engine)
        for name in ("workers", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise RecaptionError(f"--{name} must be at least 1, got {v}")
        own = {o.name for o in mod.OPTIONS}
        owners, defaults = option_owners(), option_defaults()
        for k, v in self.options.items():
            if k in own:
                continue
            if k not in owners:
                raise unknown("engine option", k, list(owners))
            if v is None or v == defaults[k]:  # not given, whatever the option's type
                continue
            raise RecaptionError(f"--{k.replace('_', '-')} is an option of the {owners[k]} engine; "
                                 f"add --engine {owners[k]}, or leave it out")
        mod.validate(self)
        return self

    def get(self, name: str):
        """One of the engine's own options (its declared default when not given)."""
        if name in self.options:
            return self.options[name]
        return next((o.default for o in engine(self.engine).OPTIONS if o.name == name), None)


def threads_per_worker(ex: Execution, workers: int) -> int:
    """torch threads for each worker: the option, else this machine's cores shared by the workers."""
    return ex.threads or max(1, cpu_cores() // max(1, workers))


def as_dict(report):
    """Stage reports cross process boundaries as plain dicts."""
    return dataclasses.asdict(report) if dataclasses.is_dataclass(report) else report


def limit_threads(n: int | None, stage=None) -> int | None:
    """Set torch's intra-op threads in this worker for a stage that runs models (`uses_torch`);
    returns the count it replaced, so an in-process run can put it back."""
    if not n or not getattr(stage, "uses_torch", False):
        return None
    import torch

    before = torch.get_num_threads()
    if hasattr(stage, "set_threads"):  # the stage splits its share (decode processes, torch threads)
        stage.set_threads(n)
    else:
        torch.set_num_threads(n)
    return before


def restore_threads(before: int | None) -> None:
    """Put back the torch thread count an in-process run replaced."""
    if before:
        import torch

        torch.set_num_threads(before)


def preflight(ex: Execution, cpu_only: bool = False) -> None:
    """Check, before anything is written, that the engine can give what was asked (Ray: connect and
    compare the actor resources with the cluster's nodes)."""
    engine(ex.engine).preflight(ex, cpu_only)


def item_counts(items: list, count_of=None) -> list:
    """Each item's sample count where `count_of` knows it (None where not), looked up a few at a
    time: for remote shards each is a request."""
    if count_of is None:
        return [None] * len(items)
    if len(items) < 8:
        return [count_of(i) for i in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(count_of, items))


def run_stage(stage, items: list, execution: Execution | None = None, *, desc: str = "", count_of=None,
              cpu_only: bool = False) -> list[dict]:
    """Run `stage` over `items` with the chosen engine; one report dict per item, in any order.

    Items must be JSON-able (the contract every engine relies on; checked here for all).
    `count_of(item)` gives an item's sample count where known (for the progress bar's total);
    `cpu_only` stages (writing shards) take no GPU even where the cluster has some."""
    ex = (execution or Execution()).validate()
    try:
        json.dumps(items)
    except TypeError as e:
        raise RecaptionError(f"internal: a stage's work items must be JSON-able ({e})") from None
    return engine(ex.engine).run(stage, items, ex, desc=desc, count_of=count_of, cpu_only=cpu_only)


def mapper(ex: Execution | None = None):
    """How a pass over annotation files runs (the mix's pool pass and plan): the engine's mapper
    (threads in this process for `local`, one Ray Data task per file for `ray`)."""
    ex = (ex or Execution()).validate()
    return engine(ex.engine).mapper(ex)
