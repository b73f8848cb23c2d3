"""Per-item stages that any engine runs unchanged: annotate (one input shard), import-captions (one
input shard), mix-write (one output shard from its plan).

The contract between a stage and an engine (`recaption.engines`), which every stage here keeps:

* A stage is an object called once per work item, `stage(item, progress=None)`, returning a
  report: a dataclass or dict of plain values (`reports.ShardReport`, `write_mix.WriteReport`),
  with at least `shard`, `status` (done, skipped or failed) and `samples`. A failing item is a
  `failed` report, never an exception: one bad shard does not stop the others.
* Items are JSON-able (shard URLs, output-shard plans as dicts): the Ray engine ships them as
  JSON rows, and `engines.run_stage` checks it for every engine.
* The stage is pickled before it is set up: what is heavy (models, decode processes) is built
  lazily in the worker on its first item (`__getstate__` leaves it out), and released by
  `close()` where it has one.
* A stage that runs torch says so (`uses_torch = True`) and may take the worker's CPU share
  through `set_threads(n)` (to split it between decode processes and torch threads).
* `progress(n)`, when given, is called with sample counts as they are processed (a worker's
  calls cross a queue: batch them); `progress(text)` says what the worker does before its samples
  come (`"loading models"`), shown until the first count.
* Remote storage options reach the stage's process through the engine (`io.fs.set_options` in
  every worker), never through the stage's own state.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol


class Stage(Protocol):
    """What an engine runs (see the module docstring for the whole contract)."""

    def __call__(self, item: Any, progress: Callable[[int | str], None] | None = None) -> Any:
        """Process one work item; a report (dataclass or dict of plain values)."""
