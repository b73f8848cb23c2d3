"""The annotate stage: one input shard in, one annotation parquet out.

read + decode a batch ahead (inputs.py) -> caption and CLIP on the same batch (bundle.py) ->
SIEVE over the shard's texts -> write the file whole, recording each group's settings (commit.py).
Any engine runs it: the stage pickles before `setup()`, which builds the models in the worker.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from recaption.io import annotations as ann
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

    def setup(self) -> None:
        """Build the models once per worker."""
        if self.models is None:
            self.models = ModelBundle(self.spec.models)

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
        opts = DecodeOptions(**{**self.spec.decode.__dict__, "draft_size": m.draft_size})
        with ShardBatches(url, opts, prepare=m.prepare, on_wait=lambda s: t.add("wait_input", s)) as batches:
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
        todo, measured = [], []
        for i, (rec, img) in enumerate(zip(batch.records, batch.images)):
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
            if "metrics" in work.todo:
                row.update(sample_metrics(rec, img))
                measured.append(row)
            if img is None or isinstance(img, Exception):
                row.update(status="error", error=f"decode: {img}")
                continue
            todo.append((i, row))
        if measured:
            with t("metrics"):
                add_language(measured, self.models.lid)
        return todo

    def _models(self, todo, batch, name, work, t) -> None:
        m = self.models
        pos = [i for i, _ in todo]
        rows = [r for _, r in todo]
        images = [batch.images[i] for i in pos]
        whole = pos == batch.good  # prepared inputs cover exactly the decodable images
        prep = batch.prepared if whole else {}
        if "captions" in work.todo:
            with t("caption"):
                m.caption(rows, images, name, prep.get("caption"))
        if "clip" in work.todo:
            with t("clip"):
                m.clip_score(rows, images, prep.get("clip") if all(r["status"] == "ok" for r in rows) else None)
        if "rerank" in work.todo:
            m.rerank(rows, images, prep, timer=t)

    def _sieve(self, rows, work, t) -> None:
        if "sieve" in work.todo:
            with t("sieve"):
                self.models.sieve_score(rows)
