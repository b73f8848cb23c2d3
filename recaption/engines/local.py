"""Local engine: in-process on CPU, or one worker process per visible GPU with shards handed out
dynamically (the next free worker takes the next shard)."""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

from recaption.engines import as_dict
from recaption.progress import Progress

_STAGE = None


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def default_workers() -> int:
    return max(1, gpu_count())


def _init(stage, gpu_queue):
    global _STAGE
    gpu = gpu_queue.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    _STAGE = stage


def _work(item):
    return as_dict(_STAGE(item))


def run(stage, items, *, workers=None, desc="", quiet=False, count_of=None) -> list[dict]:
    """Run `stage` over `items`; the bar counts samples (`count_of(item)` where known, else an
    estimate from the first finished item) so it can show samples/s and an ETA."""
    workers = workers or default_workers()
    workers = min(workers, max(1, len(items)))
    counts = [count_of(i) if count_of else None for i in items]
    total = sum(counts) if counts and all(c is not None for c in counts) else None
    reports = []
    with Progress(desc, total=total, unit="samples", quiet=quiet) as bar:
        def finished(r):
            reports.append(r)
            bar.note(r)
            if bar.total is None and r.get("samples"):  # estimate the rest from what one item held
                bar.set_total(int(r["samples"] * len(items)))

        if workers <= 1:
            for item in items:
                finished(as_dict(stage(item, progress=bar.advance)))
            return reports
        ctx = mp.get_context("spawn")
        gpus = ctx.Queue()
        n_gpu = gpu_count()
        for w in range(workers):
            gpus.put(w % n_gpu if n_gpu else None)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(stage, gpus)) as ex:
            futs = [ex.submit(_work, it) for it in items]
            for f in as_completed(futs):
                r = f.result()
                bar.advance(r.get("samples", 0))
                finished(r)
    return reports
