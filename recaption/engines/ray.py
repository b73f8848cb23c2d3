"""Ray engine: the same stages on Ray Data, as a pool of actors (how img2dataset uses Ray).

Each work item is one row; an actor builds its models once (`setup`) and runs the stage per row.
Resources per actor are configurable; on CPU-only clusters actors take a fraction of a CPU so the
read tasks are never starved.
"""
from __future__ import annotations

import json
import tempfile

from recaption.engines import as_dict
from recaption.errors import require


class _StageActor:
    def __init__(self, stage):
        self.stage = stage

    def __call__(self, batch):
        import numpy as np

        out = [json.dumps(as_dict(self.stage(json.loads(item)))) for item in batch["item"]]
        return {"report": np.array(out, dtype=object)}


def ensure_ray(address: str | None = None, num_cpus: int | None = None):
    require("ray", "ray")
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True,
                     _temp_dir=tempfile.mkdtemp(prefix="recaption-ray-"), log_to_driver=False)
    return ray


def run(stage, items, *, workers=None, address=None, resources=None, quiet=False) -> list[dict]:
    ray = ensure_ray(address)
    import ray.data

    resources = dict(resources or {})
    gpus = float(resources.pop("num_gpus", 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0))
    cpus = float(resources.pop("num_cpus", 1.0 if gpus else 0.5))
    if workers is None:
        workers = int(ray.cluster_resources().get("GPU", 0)) if gpus else 1
    workers = max(1, min(workers, len(items)))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    ds = ray.data.from_items([{"item": json.dumps(i)} for i in items], override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        _StageActor, fn_constructor_kwargs={"stage": stage}, batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=gpus, **resources,
    )
    return [json.loads(r["report"]) for r in ds.take_all()]
