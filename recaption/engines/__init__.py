"""Executors: map a per-item stage (annotate one shard, write one output shard) over work items.

Both engines run the same stage objects and so write the same files; they differ only in where
the stage runs. A stage is picklable before `setup()`, which builds its models in the worker.
Every worker runs torch with the same number of threads for a given command on either engine,
so the numbers computed do not depend on the engine.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from recaption.errors import RecaptionError
from recaption.io.decode import cpu_cores  # noqa: F401  (re-exported: engines share cores out)

ENGINES = ("local", "ray")


@dataclass
class Execution:
    """Where and how stages run (the Execution options of every verb)."""

    engine: str = "local"
    workers: int | None = None  # worker processes/actors (default: one per GPU, else one; mix writes: local.cpu_workers)
    threads: int | None = None  # torch threads per worker (default: cores // workers)
    device: str | None = None
    ray_address: str | None = None
    actor_cpus: float | None = None
    actor_gpus: float | None = None
    quiet: bool = False
    log_every: float = 30.0  # seconds between progress log lines when stderr is not a terminal

    def validate(self) -> "Execution":
        """Refuse settings no engine can honour (and a missing Ray); returns self."""
        if self.engine not in ENGINES:
            raise RecaptionError(f"unknown engine {self.engine!r}; choose {', '.join(ENGINES)}")
        for name in ("workers", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise RecaptionError(f"--{name} must be at least 1, got {v}")
        for name in ("actor_cpus", "actor_gpus"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise RecaptionError(f"--{name.replace('_', '-')} must not be negative, got {v}")
        if self.engine == "ray":
            from recaption.errors import require

            require("ray", "ray")
        return self


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


def preflight(ex: Execution, cpu_only: bool = False) -> None:
    """Check, before anything is written, that the engine can give what was asked (Ray: connect and
    compare the actor resources with the cluster's nodes)."""
    if ex.engine == "ray":
        from recaption.engines.ray import actor_resources

        actor_resources(ex, cpu_only)


def restore_threads(before: int | None) -> None:
    """Put back the torch thread count an in-process run replaced."""
    if before:
        import torch

        torch.set_num_threads(before)


def run_stage(stage, items: list, execution: Execution | None = None, *, desc: str = "", count_of=None,
              cpu_only: bool = False) -> list[dict]:
    """Run `stage` over `items` with the chosen engine; one report dict per item, in any order.

    `count_of(item)` gives an item's sample count where known (for the progress bar's total);
    `cpu_only` stages (writing shards) take no GPU even where the cluster has some."""
    ex = (execution or Execution()).validate()
    if ex.engine == "local":
        from recaption.engines.local import run

        return run(stage, items, ex, desc=desc, count_of=count_of, cpu_only=cpu_only)
    from recaption.engines.ray import run

    return run(stage, items, ex, desc=desc, count_of=count_of, cpu_only=cpu_only)


def mapper(ex: Execution | None = None):
    """How a pass over annotation files runs (the mix's pool pass and plan): None for `local`
    (threads in this process, the pool pass's default), one Ray Data task per file for `ray`."""
    ex = (ex or Execution()).validate()
    if ex.engine == "local":
        return None
    from recaption.engines.ray import RayMapper

    return RayMapper(ex.ray_address, num_cpus=1.0, quiet=True)
