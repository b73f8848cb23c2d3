"""The annotate stage: one input shard in, one annotation parquet out.

read + decode a batch ahead (inputs.py) -> every annotator that reads samples, in run order, on
the same batch (captions, then the scores computed from them) -> the annotators that work on the
whole shard's texts (SIEVE) -> write the file whole, recording each group's settings (commit.py).
Any engine runs it: the stage pickles before `setup()`, which builds the annotators in the worker.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from recaption import annotators as registry
from recaption.io import annotations as ann
from recaption.io import tarindex
from recaption.io.shards import ReadFailure
from recaption.io.sources import shard_name
from recaption.stages.bundle import AnnotatorSpec, Bundle
from recaption.stages.commit import ShardWork, commit, plan_shard
from recaption.stages.inputs import DecodeOptions, ShardBatches
from recaption.stages.reports import ShardReport, Timer, error_reasons

log = logging.getLogger("recaption")


@dataclass
class AnnotateSpec:
    """Everything a worker needs to annotate shards (picklable)."""

    ann_dir: str
    models: AnnotatorSpec
    groups: dict[str, dict]  # column group -> the settings that compute it
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    overwrite: bool = False


class BatchRows:
    """One batch of a shard as the annotators see it (`recaption.annotators.base.Batch`)."""

    def __init__(self, shard: str, rows: list[dict], records: list, positions: list[int], batch, bundle: Bundle,
                 timer: Timer):
        self.shard, self.rows, self.records = shard, rows, records
        self._pos, self._batch, self._bundle, self._timer = positions, batch, bundle, timer
        self._decoded = set(batch.good)
        self.memo: dict = {}  # what several annotators of this batch share (CLIP image embeddings)

    def live(self) -> list[int]:
        """Rows whose image decoded and that are still ok."""
        return [i for i, (r, p) in enumerate(zip(self.rows, self._pos)) if r["status"] == "ok" and p in self._decoded]

    def inputs(self, model, idx: list[int]) -> list:
        """Per-sample inputs of `model` for rows `idx`."""
        return self._batch.inputs(self._bundle.input_name(model), [self._pos[i] for i in idx])

    def batched(self, model, idx: list[int]):
        """The batch's inputs of `model` when rows `idx` are exactly its decoded samples, else None."""
        if [self._pos[i] for i in idx] != self._batch.good:
            return None
        return self._batch.batched(self._bundle.input_name(model))

    def source_size(self, i: int):
        """The stored image's (width, height) of row i."""
        return self._batch.source_size(self._pos[i])

    def timer(self, name: str):
        """Seconds spent inside, added to the named stage."""
        return self._timer(name)


class AnnotateStage:
    """Callable on one shard URL; returns a ShardReport."""

    uses_torch = True  # engines set torch's thread count in its workers

    def __init__(self, spec: AnnotateSpec):
        self.spec = spec
        self.bundle: Bundle | None = None
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
        """Build the annotators and the decode pool once per worker."""
        if self.bundle is None:
            self.bundle = Bundle(self.spec.models, self.spec.ann_dir)
        if self.pool is None and self.spec.models.reads_images:
            self.pool = self.bundle.decode_pool(self.spec.decode, self._plan()[0], self._device())

    def close(self) -> None:
        """Stop the decode processes and free their shared memory."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __getstate__(self):  # pickled before setup: models and pools are built in the worker
        return {"spec": self.spec, "bundle": None, "pool": None, "threads": self.threads}

    def __call__(self, url: str, progress=None) -> ShardReport:
        registry.ensure(self.spec.models.targets)  # annotators the driver registered at run time
        name = shard_name(url)
        out = ann.path_for(self.spec.ann_dir, name)
        t = Timer()
        try:
            work = plan_shard(out, self.spec.groups, self.spec.overwrite)
            if not work.todo:
                if progress:
                    progress(work.existing_rows)
                return ShardReport(name, "skipped", work.existing_rows)
            if self.bundle is None:  # the worker's first shard: its models load now, counted as a stage
                if progress:
                    progress("loading models")
                with t("load_models"):
                    self.setup()
            self.setup()
            rows = self._rows(url, name, work, t, progress)
            if work.needs_images(self.bundle.annotators):  # the shard was read: its member index holds as it is now
                work.keep[tarindex.GROUP] = tarindex.identity(url)
            with t("write"):
                commit(out, rows, work, self.spec.groups)
        except Exception as e:  # a broken shard never stops the others
            log.debug("shard %s failed", name, exc_info=True)  # the driver reports it (workers may log nowhere)
            return ShardReport(name, "failed", error=f"{type(e).__name__}: {e}", seconds=t.s)
        keyed = [r for r in rows if r["key"] is not None]
        read_error = next((r["error"] for r in rows if r["key"] is None), None)
        from recaption.annotators.groups import fusion_counts

        fused = fusion_counts(rows, work.todo)  # which clause of a chained group's rule sent each row
        return ShardReport(name, "done", len(keyed), sum(r["status"] != "ok" for r in keyed), t.s,
                           read_error=read_error, reasons=error_reasons(rows), info={"fusion": fused} if fused else {})

    def _todo(self, work: ShardWork) -> list:
        return [a for n, a in self.bundle.annotators.items() if n in work.todo]

    def _rows(self, url: str, name: str, work: ShardWork, t: Timer, progress) -> list[dict]:
        todo = self._todo(work)
        per_batch = [a for a in todo if a.reads_images]  # an instance may read none (saved embeddings)
        if not work.needs_images(self.bundle.annotators):  # SIEVE alone, heads over saved embeddings: the file suffices
            self._finish(work.rows, todo, t)
            return work.rows
        by_key = None
        rows: list[dict] = []
        if work.rows is not None:  # scoring captions already in the file
            rows = work.rows
            by_key = {r["key"]: r for r in rows if r["key"] is not None and r["status"] == "ok"}
        b = self.bundle
        with ShardBatches(url, self.spec.decode, self.pool, prepare=b.exact_preparers(),
                          on_wait=lambda s: t.add("wait_input", s)) as batches:
            for batch in batches:
                view = self._batch_rows(batch, name, rows, by_key, t)
                if view.rows:
                    for a in per_batch:
                        timer = type(a).timer
                        if timer is None:
                            a.annotate_batch(view)
                        else:
                            with t(timer or a.name):
                                a.annotate_batch(view)
                if progress:
                    progress(len(batch.records))
        if work.carry:  # rows made anew: the groups kept from the file, for the chained groups that read them
            for r in rows:
                r.update(work.carry.get(r["key"]) or {})
        self._finish(rows, todo, t)
        return rows

    def _batch_rows(self, batch, name, rows, by_key, t) -> BatchRows:
        """The rows of a batch's samples (new rows are appended to `rows`); a sample whose image did
        not decode is an error row (the annotators that measure every sample still see it)."""
        mine, recs, pos = [], [], []
        for i, rec in enumerate(batch.records):
            if isinstance(rec, ReadFailure):
                if by_key is None:
                    rows.append(registry.error_row(rec.key, name, rec.reason))
                continue
            if by_key is not None:
                row = by_key.get(rec.key)
                if row is None:
                    continue  # a key the annotation file does not know: nothing to score
            else:
                row = registry.empty_row(rec.key, name, rec.raw_caption)
                rows.append(row)
            row.update(rec.index_fields())  # where its members lie in the tar (io/tarindex.py)
            row.update(rec.digest_fields())  # what its txt and json were (a re-written shard is told apart)
            err = batch.image_error(i)
            if err is not None:
                row.update(status="error", error=f"decode: {err}")
            mine.append(row)
            recs.append(rec)
            pos.append(i)
        return BatchRows(name, mine, recs, pos, batch, self.bundle, t)

    @staticmethod
    def _finish(rows, todo, t) -> None:
        for a in todo:
            if type(a).finish_shard is not registry.Annotator.finish_shard:
                with t(type(a).timer or a.name):
                    a.finish_shard(rows)
