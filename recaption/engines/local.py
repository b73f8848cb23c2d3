"""Local engine: in-process on CPU, or one worker process per visible GPU with shards handed out
dynamically (the next free worker takes the next shard)."""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

from recaption.progress import Progress

_STAGE = None


def default_workers() -> int:
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:
        return 1


def _init(stage, gpu_queue):
    global _STAGE
    gpu = gpu_queue.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    _STAGE = stage


def _work(item):
    return _as_dict(_STAGE(item))


def _as_dict(r):
    return dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r


def run(stage, items, *, workers=None, desc="", quiet=False, count_of=None) -> list[dict]:
    workers = workers or default_workers()
    workers = min(workers, max(1, len(items)))
    total = sum(count_of(i) for i in items) if count_of else None
    reports = []
    with Progress(desc, total=total if total else len(items), unit="samples" if total else "shards",
                  quiet=quiet) as bar:
        if workers <= 1:
            for item in items:
                r = _as_dict(stage(item, progress=bar.advance) if total else stage(item))
                if not total:
                    bar.advance(1)
                reports.append(r)
                bar.note(r)
            return reports
        ctx = mp.get_context("spawn")
        gpus = ctx.Queue()
        n_gpu = default_workers() if _has_cuda() else 0
        for w in range(workers):
            gpus.put(w % n_gpu if n_gpu else None)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(stage, gpus)) as ex:
            futs = {ex.submit(_work, it): it for it in items}
            for f in as_completed(futs):
                r = f.result()
                reports.append(r)
                bar.advance(r.get("samples", 1) if total else 1)
                bar.note(r)
    return reports


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False
