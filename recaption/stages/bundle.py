"""The annotators of one annotate worker, built once from picklable configs, and the image models
they share: each model is decoded for once, whichever annotators read it.

The caller's configs are never changed: a worker-level device is applied to copies. Only the model
thread touches tokenizers; `prepare` (images only) may run in the reader thread.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from recaption.annotators import load_target, run_order
from recaption.annotators.base import WorkerContext


@dataclass
class AnnotatorSpec:
    """What to build in a worker: each annotator's config, and where its class is imported from
    (so annotators registered in the driver load in spawned workers and Ray actors too)."""

    configs: dict = field(default_factory=dict)  # name -> config
    targets: dict = field(default_factory=dict)  # name -> "module:Class"
    device: str | None = None  # applied where a config names none

    @property
    def reads_images(self) -> bool:
        """Whether any configured annotator reads the shard's samples."""
        return any(load_target(self.targets[n]).reads_images for n in self.configs)


class Bundle:
    """The annotators of one worker, in run order, and the pixel inputs of their image models."""

    def __init__(self, spec: AnnotatorSpec, ann_dir: str | None = None):
        ctx = WorkerContext(device=spec.device, ann_dir=ann_dir)
        self.annotators = {n: load_target(spec.targets[n])(spec.configs[n], ctx) for n in run_order(spec.configs)}
        self.names: dict[int, str] = {}  # id(model) -> the name its inputs travel under
        self.models: dict[str, object] = {}
        for a in self.annotators.values():
            for local, m in a.image_models().items():
                if id(m) not in self.names:
                    name = f"{a.name}.{local}"
                    self.names[id(m)] = name
                    self.models[name] = m

    def input_name(self, model) -> str:
        """The name a model's inputs travel under in decoded batches."""
        return self.names[id(model)]

    @property
    def draft_size(self) -> int | None:
        """The largest input any image model needs: JPEGs decode at no less than this."""
        sizes = [m.image_size for m in self.models.values()]
        return max(sizes) if sizes else None

    def decode_pool(self, opts, workers: int, device: str):
        """The worker's decode pool: the fast path's pixel specs, PIL images for models that keep
        their own processor (opts.preprocess == 'exact', vLLM, settings the fast path cannot copy)."""
        from recaption.io.decode import DecodePool
        from recaption.io.pixels import specs_for

        specs = specs_for(self.models, opts.preprocess)
        self.exact = [n for n, sp in specs.items() if sp is None]
        return DecodePool({n: sp for n, sp in specs.items() if sp is not None}, batch_size=opts.batch_size,
                          workers=workers, max_pixels=opts.max_pixels, draft_size=self.draft_size,
                          images=bool(self.exact) or not specs, device=device, gpu_decode=opts.gpu_decode)

    def exact_preparers(self) -> dict:
        """Image-only preparation of the models on their own processors (safe in the reader thread)."""
        return {n: self.models[n].prepare for n in getattr(self, "exact", [])}
