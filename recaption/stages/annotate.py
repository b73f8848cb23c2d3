"""The annotate stage: one input shard in, one annotation parquet out.

read + decode a batch ahead (inputs.py) -> caption and CLIP on the same batch (bundle.py) ->
SIEVE over the shard's texts -> write the file whole, recording each group's settings (commit.py).
Any engine runs it: the stage pickles before `setup()`, which builds the models in the worker.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from recaption.io import annotations as ann
from recaption.io import tarindex
from recaption.io.shards import ReadFailure
from recaption.io.sources import shard_name
from recaption.stages.bundle import ModelBundle, ModelSpec
from recaption.stages.commit import ShardWork, commit, plan_shard
from recaption.stages.inputs import DecodeOptions, ShardBatches
from recaption.stages.metrics import add_language, sample_metrics
from recaption.stages.reports import ShardReport, Timer, error_reasons

log = logging.getLogger("recaption")


@dataclass
class AnnotateSpec:
    """Everything a worker needs to annotate shards (picklable)."""

    ann_dir: str
    models: ModelSpec
    groups: dict[str, dict]  # column group -> the settings that compute it
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    overwrite: bool = False


class AnnotateStage:
    """Callable on one shard URL; returns a ShardReport."""

    uses_torch = True  # engines set torch's thread count in its workers

    def __init__(self, spec: AnnotateSpec):
        self.spec = spec
        self.models: ModelBundle | None = None
        self.pool = None
        self.threads: int | None = None

    def set_threads(self, n: int) -> None:
        """The worker's CPU share, from the engine: split between decode processes and torch."""
        self.threads = n
        import torch

        torch.set_num_threads(self._plan()[1])

    def _plan(self) -> tuple[int, int]:
        from recaption.io.decode import cpu_cores, plan_threads

        return plan_threads(self.threads or cpu_cores(), self._device())

    def _device(self) -> str:
        from recaption.models import resolve_device

        return resolve_device(self.spec.models.device)

    def setup(self) -> None:
        """Build the models and the decode pool once per worker."""
        if self.models is None:
            self.models = ModelBundle(self.spec.models)
        if self.pool is None and (self.models.image_models() or self.models.lid is not None):
            self.pool = self.models.decode_pool(self.spec.decode, self._plan()[0], self._device())

    def close(self) -> None:
        """Stop the decode processes and free their shared memory."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __getstate__(self):  # pickled before setup: models and pools are built in the worker
        return {"spec": self.spec, "models": None, "pool": None, "threads": self.threads}

    def __call__(self, url: str, progress=None) -> ShardReport:
        name = shard_name(url)
        out = ann.path_for(self.spec.ann_dir, name)
        t = Timer()
        try:
            work = plan_shard(out, self.spec.groups, self.spec.overwrite)
            if not work.todo:
                if progress:
                    progress(work.existing_rows)
                return ShardReport(name, "skipped", work.existing_rows)
            self.setup()
            rows = self._rows(url, name, work, t, progress)
            if work.needs_images:  # the shard was read: its member index holds for it as it is now
                work.keep[tarindex.GROUP] = tarindex.identity(url)
            with t("write"):
                commit(out, rows, work, self.spec.groups)
        except Exception as e:  # a broken shard never stops the others
            log.debug("shard %s failed", name, exc_info=True)  # the driver reports it (workers may log nowhere)
            return ShardReport(name, "failed", error=f"{type(e).__name__}: {e}", seconds=t.s)
        keyed = [r for r in rows if r["key"] is not None]
        read_error = next((r["error"] for r in rows if r["key"] is None), None)
        return ShardReport(name, "done", len(keyed), sum(r["status"] != "ok" for r in keyed), t.s,
                           read_error=read_error, reasons=error_reasons(rows))

    def _rows(self, url: str, name: str, work: ShardWork, t: Timer, progress) -> list[dict]:
        if not work.needs_images:  # SIEVE alone: the texts are in the file
            self._sieve(work.rows, work, t)
            return work.rows
        m = self.models
        by_key = None
        rows: list[dict] = []
        if work.rows is not None:  # scoring captions already in the file
            rows = work.rows
            by_key = {r["key"]: r for r in rows if r["key"] is not None and r["status"] == "ok"}
        with ShardBatches(url, self.spec.decode, self.pool, prepare=m.exact_preparers(),
                          on_wait=lambda s: t.add("wait_input", s)) as batches:
            for batch in batches:
                todo = self._batch_rows(batch, name, rows, by_key, work, t)
                if todo:
                    self._models(todo, batch, name, work, t)
                if progress:
                    progress(len(batch.records))
        self._sieve(rows, work, t)
        return rows

    def _batch_rows(self, batch, name, rows, by_key, work, t) -> list[tuple[int, dict]]:
        """Rows for a batch's records (new rows are appended to `rows`): (position, row) to model."""
        todo, measured, spent = [], [], 0.0
        for i, rec in enumerate(batch.records):
            if isinstance(rec, ReadFailure):
                if by_key is None:
                    rows.append(ann.error_row(rec.key, name, rec.reason))
                continue
            if by_key is not None:
                row = by_key.get(rec.key)
                if row is None:
                    continue  # a key the annotation file does not know: nothing to score
            else:
                row = ann.empty_row(rec.key, name, rec.raw_caption)
                if "captions" in work.todo:
                    row["captioner"] = self.models.captioner.id
                rows.append(row)
            row.update(rec.index_fields())  # where its members lie in the tar (io/tarindex.py)
            if "metrics" in work.todo:
                t0 = time.perf_counter()
                row.update(sample_metrics(rec, batch.source_size(i)))
                spent += time.perf_counter() - t0
                measured.append(row)
            err = batch.image_error(i)
            if err is not None:
                row.update(status="error", error=f"decode: {err}")
                continue
            todo.append((i, row))
        if measured:  # the whole cost of the filter metrics is timed as `metrics`
            t.add("metrics", spent)
            with t("metrics"):
                add_language(measured, self.models.lid)
        return todo

    def _models(self, todo, batch, name, work, t) -> None:
        m = self.models
        pos = [i for i, _ in todo]
        rows = [r for _, r in todo]
        whole = pos == batch.good  # batched inputs cover exactly the decodable images

        def inputs(model):
            return batch.inputs(model, pos)

        def batched(model):
            return batch.batched(model) if whole else None

        if "captions" in work.todo:
            with t("caption"):
                m.caption(rows, inputs("caption"), name, batched("caption"))
        if "clip" in work.todo:
            with t("clip"):
                m.clip_score(rows, inputs("clip"), batched("clip") if all(r["status"] == "ok" for r in rows) else None)
        if "rerank" in work.todo:
            names = {m.reranker_name(i) for i in range(len(m.steps))}
            m.rerank(rows, {n: inputs(n) for n in names}, {n: batched(n) for n in names}, timer=t)

    def _sieve(self, rows, work, t) -> None:
        if "sieve" in work.todo:
            with t("sieve"):
                self.models.sieve_score(rows)
