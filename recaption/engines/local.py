"""Local engine: in-process with one worker, else one process per worker (by default one per
visible GPU; for CPU-only stages such as the mix write, one per two cores where the work pays for
starting them) with items handed out dynamically (the next free worker takes the next item)."""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from typing import Callable

from recaption.engines import (Execution, as_dict, cpu_cores, item_counts, limit_threads, restore_threads,
                               threads_per_worker)
from recaption.io.fs import get_options, set_options
from recaption.progress import Progress

_STAGE = None
_PROGRESS = None
OPTIONS = ()  # the local engine takes only the shared options (workers, threads, device)


def validate(ex: Execution) -> None:
    """Nothing beyond the shared checks."""


def preflight(ex: Execution, cpu_only: bool = False) -> None:
    """Nothing to reach: this machine's resources are checked where they are used (the device)."""


def mapper(ex: Execution) -> "Threads":
    """A few threads in this process."""
    return Threads()


class Threads:
    """The local mapper: a few threads (pyarrow and numpy release the GIL), results in order."""
    in_process = True

    def __init__(self, n: int | None = None):
        self.n = n or min(8, cpu_cores())

    def map(self, fn: Callable, items: list):
        """fn over items in order, at most 4 results per thread waiting: memory does not grow with the pool."""
        window = 4 * self.n  # bounded read-ahead: results wait in order, never the whole pool
        with ThreadPoolExecutor(self.n) as ex:
            futs = [ex.submit(fn, it) for it in items[:window]]
            for i in range(len(items)):
                r = futs[i].result()
                futs[i] = None
                if i + window < len(items):
                    futs.append(ex.submit(fn, items[i + window]))
                yield r




def gpu_count() -> int:
    """CUDA devices visible here (0 without torch or CUDA)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


SAMPLES_PER_PROCESS = 50_000  # what a process writes in a few seconds: starting one costs about a second


def cpu_workers(samples: int | None, cores: int) -> int:
    """Processes for a CPU-only stage (output shards are independent): one per two cores, since
    a writing process keeps about two busy (its own thread, and its writer thread's copies in the
    kernel), and no more than the samples pay for (a spawned process imports pyarrow first)."""
    most = max(1, cores // 2)
    return most if samples is None else max(1, min(most, samples // SAMPLES_PER_PROCESS))


def _init(stage, gpu_queue, progress_queue, threads, storage_options=None):
    global _STAGE, _PROGRESS
    set_options(storage_options)  # spawned workers read and write with the parent's options
    gpu = gpu_queue.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    limit_threads(threads, stage)
    _STAGE, _PROGRESS = stage, progress_queue


def _work(item):
    return as_dict(_STAGE(item, progress=_PROGRESS.put))


def run(stage, items, ex: Execution, *, desc="", count_of=None, cpu_only=False) -> list[dict]:
    """Run `stage` over `items`; the bar counts samples as the workers process them. A `cpu_only`
    stage (writing shards) never asks for GPUs, so it does not import torch."""
    n_gpu = 0 if cpu_only else gpu_count()
    counts = item_counts(items, count_of)
    total = sum(counts) if all(c is not None for c in counts) else None
    workers = ex.workers or (cpu_workers(total, cpu_cores()) if cpu_only else max(1, n_gpu))
    threads = threads_per_worker(ex, workers)
    workers = min(workers, max(1, len(items)))
    reports: list[dict] = []
    with Progress(desc, quiet=ex.quiet, log_every=ex.log_every, counts=counts) as bar:
        def finished(i, r):
            reports.append(r)
            bar.finished(i, r)

        if workers <= 1:
            before = limit_threads(threads, stage)
            try:
                for i, item in enumerate(items):
                    finished(i, as_dict(stage(item, progress=bar.advance)))
            finally:
                restore_threads(before)
                if hasattr(stage, "close"):  # its decode pool: processes and shared memory
                    stage.close()
            return reports
        ctx = mp.get_context("spawn")
        gpus, progress = ctx.Queue(), ctx.Queue()
        for w in range(workers):
            gpus.put(w % n_gpu if n_gpu else None)
        stop = threading.Event()
        drain = threading.Thread(target=_drain, args=(progress, bar, stop), daemon=True)
        drain.start()
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                                     initargs=(stage, gpus, progress, threads, get_options())) as ex_:
                futs = {ex_.submit(_work, it): i for i, it in enumerate(items)}
                for f in as_completed(futs):
                    finished(futs[f], f.result())
        finally:
            stop.set()
            drain.join()
    return reports


def _drain(q, bar, stop):
    while not (stop.is_set() and q.empty()):
        try:
            bar.advance(q.get(timeout=0.1))
        except queue.Empty:
            continue
        except (EOFError, OSError):
            return
