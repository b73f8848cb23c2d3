"""Ray engine: the same stages on Ray Data, as a pool of actors (how img2dataset uses Ray).

Each work item is one row; an actor builds its models once and runs the stage per row, reporting
samples to a small counter actor so the driver's progress moves as samples are processed.
A request the cluster cannot meet (GPUs it does not have, more CPUs than a node holds) fails at
once with one line, instead of waiting forever for resources.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
import threading

from recaption.declare import Option
from recaption.engines import Execution, as_dict, item_counts, limit_threads, threads_per_worker
from recaption.errors import RecaptionError, require
from recaption.io.fs import get_options, set_options
from recaption.progress import Progress

log = logging.getLogger("recaption")
OPTIONS = (
    Option("ray_address", str, None, "Ray cluster address, e.g. auto (--engine ray)"),
    Option("actor_cpus", float, None, "CPUs per Ray actor (default 0.5 on CPU, 1 with GPUs)"),
    Option("actor_gpus", float, None, "GPUs per Ray actor (default 1 when the cluster has GPUs)"),
)


def validate(ex: Execution) -> None:
    """Ray must be installed (recaption[ray]); actor resources are not negative."""
    for name in ("actor_cpus", "actor_gpus"):
        v = ex.get(name)
        if v is not None and v < 0:
            raise RecaptionError(f"--{name.replace('_', '-')} must not be negative, got {v}")
    require("ray", "ray")


def preflight(ex: Execution, cpu_only: bool = False) -> None:
    """Connect to the cluster and refuse actor resources no node has."""
    actor_resources(ex, cpu_only)


def mapper(ex: Execution) -> "RayMapper":
    """One Ray Data task per annotation file."""
    return RayMapper(ex.get("ray_address"), num_cpus=1.0, quiet=True)


class _StageActor:
    def __init__(self, stage, threads, counter, storage_options=None):
        set_options(storage_options)  # the driver's options, in every actor process
        limit_threads(threads, stage)
        self.stage, self.counter = stage, counter

    def __call__(self, batch):
        import numpy as np

        out = [json.dumps(as_dict(self.stage(json.loads(item), progress=self._progress))) for item in batch["item"]]
        return {"report": np.array(out, dtype=object)}

    def _progress(self, n):
        self.counter.add.remote(n)


class _Counter:
    def __init__(self):
        self.n = 0
        self.notes: list[str] = []

    def add(self, n):
        if isinstance(n, str):  # what a worker does before its samples (loading models)
            self.notes.append(n)
        else:
            self.n += n

    def take(self):
        (n, self.n), (notes, self.notes) = (self.n, 0), (self.notes, [])
        return n, notes


def ensure_ray(address: str | None = None):
    """Connect to `address`, or start a local instance with its own temp folder."""
    require("ray", "ray")
    import ray

    if address:  # checked even where this process is connected already: the address must be right
        check_reachable(address)
    if not ray.is_initialized():
        if address:
            log.info("connecting to the Ray cluster at %s", address)
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, ignore_reinit_error=True,
                     _temp_dir=tempfile.mkdtemp(prefix="recaption-ray-"), log_to_driver=False)
    return ray


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """A `HOST:PORT` (or `ray://HOST:PORT`) address must accept a connection: Ray itself retries an
    unreachable one for ever, silently. `auto` and other forms are left to Ray."""
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([^\]\s]+?)\]?:(\d+)", address.strip())
    if not m:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as e:
        raise RecaptionError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one "
                             "(`ray start --head`) or check --ray-address") from None


def check_resources(ray, cpus: float, gpus: float) -> None:
    """Refuse actor resources that no node of the cluster can give."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if gpus > 0 and not any(n.get("GPU", 0) >= gpus for n in nodes):
        have = max((n.get("GPU", 0) for n in nodes), default=0)
        raise RecaptionError(f"each Ray actor asks for {gpus:g} GPU, but the cluster's nodes have at most {have:g}; "
                             "use --actor-gpus 0 (CPU) or a cluster with GPUs")
    if cpus > 0 and not any(n.get("CPU", 0) >= cpus for n in nodes):
        have = max((n.get("CPU", 0) for n in nodes), default=0)
        raise RecaptionError(f"each Ray actor asks for {cpus:g} CPUs, but the cluster's nodes have at most {have:g}; "
                             "lower --actor-cpus")


def actor_resources(ex: Execution, cpu_only: bool = False) -> tuple[float, float]:
    """(CPUs, GPUs) per actor, checked against the cluster (connecting to it first)."""
    ray = ensure_ray(ex.get("ray_address"))
    has_gpu = bool(ray.cluster_resources().get("GPU", 0))
    want_gpus, want_cpus = ex.get("actor_gpus"), ex.get("actor_cpus")
    gpus = 0.0 if cpu_only else float(want_gpus if want_gpus is not None else (1.0 if has_gpu else 0.0))
    cpus = float(want_cpus if want_cpus is not None else (1.0 if gpus else 0.5))
    check_resources(ray, cpus, gpus)
    return cpus, gpus


def run(stage, items, ex: Execution, *, desc="", count_of=None, cpu_only=False) -> list[dict]:
    """Run `stage` over `items` in an actor pool; returns the reports."""
    cpus, gpus = actor_resources(ex, cpu_only)
    ray = ensure_ray(ex.get("ray_address"))
    import ray.data  # noqa: F811  (the same module, with its data package loaded)

    workers = ex.workers or (int(ray.cluster_resources().get("GPU", 0)) if gpus else 1) or 1
    threads = threads_per_worker(ex, workers)
    workers = max(1, min(workers, len(items)))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts samples, Ray's counts shards
    counter = ray.remote(num_cpus=0)(_Counter).remote()
    ds = ray.data.from_items([{"item": json.dumps(i)} for i in items], override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        _StageActor, fn_constructor_kwargs={"stage": stage, "threads": threads, "counter": counter,
                                            "storage_options": get_options()}, batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=gpus,
    )
    counts = item_counts(items, count_of)
    with Progress(desc, quiet=ex.quiet, log_every=ex.log_every, counts=counts) as bar:
        stop = threading.Event()
        poll = threading.Thread(target=_poll, args=(ray, counter, bar, stop), daemon=True)
        poll.start()
        try:
            reports = [json.loads(r["report"]) for r in ds.take_all()]
        finally:
            stop.set()
            poll.join()
        _advance(bar, ray.get(counter.take.remote()))
        for n, r in enumerate(reports):  # all finished: which is which matters no more, only their counts
            bar.finished(n, r)
    ray.kill(counter)
    return reports


def _advance(bar, taken) -> None:
    n, notes = taken
    for text in notes:
        bar.say(text)
    if n:
        bar.advance(n)


def _poll(ray, counter, bar, stop):
    while not stop.wait(0.5):
        try:
            _advance(bar, ray.get(counter.take.remote(), timeout=5))
        except Exception:
            return


def _apply(row, fn, storage_options=None):
    import pickle

    set_options(storage_options)  # the driver's options, in every task
    return {"i": row["i"], "out": pickle.dumps(fn(pickle.loads(row["item"])))}


class RayMapper:
    """Maps a function over items as Ray Data tasks (one item a task); results come back in order
    as they finish, so the driver merges them one at a time."""
    in_process = False

    def __init__(self, address: str | None = None, num_cpus: float = 1.0, quiet: bool = False):
        self.address, self.num_cpus, self.quiet = address, num_cpus, quiet

    def map(self, fn, items: list):
        """Apply `fn` to every item as Ray tasks; results in item order."""
        import pickle

        if not items:
            return
        ray = ensure_ray(self.address)
        import ray.data  # noqa: F811  (the same module, with its data package loaded)

        ray.data.DataContext.get_current().enable_progress_bars = not self.quiet
        ds = ray.data.from_items([{"i": i, "item": pickle.dumps(it)} for i, it in enumerate(items)],
                                 override_num_blocks=len(items))
        ds = ds.map(_apply, fn_kwargs={"fn": fn, "storage_options": get_options()}, num_cpus=self.num_cpus)
        done, nxt = {}, 0
        for row in ds.iter_rows():
            done[row["i"]] = row["out"]
            while nxt in done:
                yield pickle.loads(done.pop(nxt))
                nxt += 1
