"""Executors: map a per-item stage (annotate one shard, write one output shard) over work items.

Both engines run the same stage objects and so write the same files; they differ only in where
the stage runs. A stage is picklable before `setup()`, which builds its models in the worker.
"""
from __future__ import annotations

import dataclasses

from recaption.errors import RecaptionError

ENGINES = ("local", "ray")


def as_dict(report):
    """Stage reports cross process boundaries as plain dicts."""
    return dataclasses.asdict(report) if dataclasses.is_dataclass(report) else report


def run_stage(stage, items: list, *, engine: str = "local", workers: int | None = None, desc: str = "",
              quiet: bool = False, ray_address: str | None = None, ray_resources: dict | None = None,
              count_of=None) -> list:
    if engine == "local":
        from recaption.engines.local import run

        return run(stage, items, workers=workers, desc=desc, quiet=quiet, count_of=count_of)
    if engine == "ray":
        from recaption.engines.ray import run

        return run(stage, items, workers=workers, address=ray_address, resources=ray_resources or {},
                   quiet=quiet)
    raise RecaptionError(f"unknown engine {engine!r}; choose {', '.join(ENGINES)}")
