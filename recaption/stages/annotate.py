"""The annotate stage: one input shard in, one SPEC 2 annotation parquet out.

read -> decode once (at the largest size any model needs) -> caption -> CLIP -> SIEVE -> write.
Models are built inside the worker from picklable configs (clip-retrieval's builder pattern);
decoding runs in a thread pool a batch ahead of the models.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from recaption.captioners.base import CaptionerConfig
from recaption.io import annotations as ann
from recaption.io.atomic import exists
from recaption.io.images import DEFAULT_MAX_PIXELS, ImageError, decode
from recaption.io.shards import DEFAULT_IMAGE_KEYS, ReadFailure, ReadOptions, iter_shard
from recaption.io.sources import shard_name
from recaption.scoring.clip import ClipConfig

log = logging.getLogger("recaption")


@dataclass
class AnnotateSpec:
    ann_dir: str
    captioner: CaptionerConfig | None = None  # None: keep the captions already in ANN
    clip: ClipConfig | None = None
    sieve_model: str | None = None
    sieve_mask: str = "sieve"
    image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS
    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_workers: int = 2
    overwrite: bool = False
    device: str | None = None

    @property
    def needs_images(self) -> bool:
        return self.captioner is not None or self.clip is not None


@dataclass
class ShardReport:
    shard: str
    status: str  # done | skipped | failed
    samples: int = 0
    errors: int = 0
    seconds: dict = field(default_factory=dict)
    error: str | None = None
    info: dict = field(default_factory=dict)  # stage-specific counts (e.g. captions matched)


class AnnotateStage:
    def __init__(self, spec: AnnotateSpec):
        self.spec = spec
        self._built = False

    def setup(self):
        """Build models once per worker."""
        if self._built:
            return
        s = self.spec
        self.captioner = self.clip = self.sieve = None
        if s.captioner is not None:
            from recaption.captioners import build_captioner

            if s.device and not s.captioner.device:
                s.captioner.device = s.device
            self.captioner = build_captioner(s.captioner)
        if s.clip is not None:
            from recaption.scoring.clip import ClipScorer

            if s.device and not s.clip.device:
                s.clip.device = s.device
            self.clip = ClipScorer(s.clip)
        if s.sieve_model is not None:
            from recaption.scoring.sieve import SieveScorer

            self.sieve = SieveScorer(s.sieve_model, s.sieve_mask, device=s.device)
        sizes = [m.image_size for m in (self.captioner, self.clip) if m is not None]
        self.draft = max(sizes) if sizes else None
        self._built = True

    # -- one shard -------------------------------------------------------------------------
    def __call__(self, url: str, progress=None) -> ShardReport:
        name = shard_name(url)
        out = ann.path_for(self.spec.ann_dir, name)
        existing = None
        if exists(out):
            existing = ann.read(out)
            if not self.spec.overwrite and (self.spec.captioner is not None or ann.is_scored(
                    existing, self.spec.clip is not None, self.spec.sieve_model is not None)):
                if progress:
                    progress(existing.num_rows)
                return ShardReport(name, "skipped", existing.num_rows)
        self.setup()
        t = _Timer()
        try:
            # without a captioner, captions come from the existing file (or there are none: raw-only scoring)
            rows = self._rows(url, name, existing if self.spec.captioner is None else None, t, progress)
            with t("write"):
                ann.write(out, rows)
        except Exception as e:  # a broken shard never stops the others
            log.exception("shard %s failed", name)
            return ShardReport(name, "failed", error=f"{type(e).__name__}: {e}", seconds=t.s)
        errs = sum(r["status"] != "ok" for r in rows)
        return ShardReport(name, "done", sum(r["key"] is not None for r in rows), errs, t.s)

    def _rows(self, url, name, existing, t, progress) -> list[dict]:
        s = self.spec
        if existing is not None:  # score mode: captions come from the file
            rows = existing.to_pylist()
            if s.clip is None:  # text-only scoring needs no image
                self._score_text(rows, t)
                return rows
            by_key = {r["key"]: r for r in rows if r["key"] is not None and r["status"] == "ok"}
        else:
            rows, by_key = [], None
        caption_name = self.captioner.id if self.captioner else None
        opts = ReadOptions(image_keys=s.image_keys)
        for batch, prep in _prefetch(self._decoded_batches(iter_shard(url, opts), name, t), t):
            todo = []
            for rec, img in batch:
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
                    row["captioner"] = caption_name
                    rows.append(row)
                if isinstance(img, ImageError):
                    row.update(status="error", error=f"decode: {img}")
                    continue
                todo.append((row, img))
            if todo:
                # prepared inputs cover every decodable image; they fit `todo` unless rows were skipped
                n_good = sum(im is not None and not isinstance(im, ImageError) for _, im in batch)
                self._model_batch(todo, name, t, prep if len(todo) == n_good else {})
            if progress:
                progress(len(batch))
        self._score_text(rows, t)
        return rows

    def _decoded_batches(self, records, name, t):
        """Group records into batches and decode their images in a thread pool."""
        s = self.spec
        pool = ThreadPoolExecutor(max(1, s.decode_workers))

        def dec(rec):
            if isinstance(rec, ReadFailure):
                return rec, None
            try:
                return rec, decode(rec.image_bytes, max_pixels=s.max_pixels, draft_size=self.draft)
            except ImageError as e:
                return rec, e

        try:
            buf = []
            for rec in records:
                buf.append(rec)
                if len(buf) >= s.batch_size:
                    yield self._prepared(list(pool.map(dec, buf)))
                    buf = []
            if buf:
                yield self._prepared(list(pool.map(dec, buf)))
        finally:
            pool.shutdown(wait=False)

    def _prepared(self, batch):
        """Model inputs for the decodable images of a batch, computed here in the producer thread
        so preprocessing overlaps the previous batch's model work. Failures fall back to the models'
        own path, where a bad sample is isolated."""
        good = [(rec, im) for rec, im in batch if im is not None and not isinstance(im, ImageError)]
        prep = {}
        try:
            ims = [im for _, im in good]
            raws = [rec.raw_caption for rec, _ in good]
            if ims and self.captioner is not None:
                prep["caption"] = self.captioner.prepare(ims, raws)
            if ims and self.clip is not None:
                prep["clip"] = self.clip.prepare(ims)
        except Exception:
            prep = {}
        return batch, prep

    def _model_batch(self, todo, name, t, prep=None):
        prep = prep or {}
        rows = [r for r, _ in todo]
        images = [im for _, im in todo]
        raws = [r["raw_caption"] for r in rows]
        if self.captioner is not None:
            with t("caption"):
                cands = self._caption_isolating(images, raws, rows, name, prep.get("caption"))
            for r, c in zip(rows, cands):
                if c is not None:
                    r["captions"] = c
        if self.clip is not None:
            live = [(r, im) for r, im in zip(rows, images) if r["status"] == "ok"]
            if live:
                with t("clip"):
                    if prep.get("clip") is not None and len(live) == len(rows):
                        emb = self.clip.encode_pixels(prep["clip"])
                    else:
                        emb = self.clip.encode_images([im for _, im in live])
                    raw_s, cand_s = self.clip.score(emb, [r["raw_caption"] for r, _ in live],
                                                    [r["captions"] or [] for r, _ in live])
                for (r, _), a, b in zip(live, raw_s, cand_s):
                    r["clip_raw"], r["clip_captions"] = a, b

    def _caption_isolating(self, images, raws, rows, name, prepared=None):
        """Caption a batch; if it fails, caption one by one so only the bad sample errors."""
        seed_key = f"{name}/{rows[0]['key']}"
        try:
            return self.captioner.caption(images, raws, seed_key, prepared)
        except Exception as e:
            if len(images) == 1:
                rows[0].update(status="error", error=f"caption: {type(e).__name__}: {e}")
                return [None]
            log.warning("captioning a batch of %s failed (%s); retrying sample by sample", name, e)
            return [self._caption_isolating([im], [raw], [r], name)[0] for im, raw, r in zip(images, raws, rows)]

    def _score_text(self, rows, t):
        if self.sieve is None:
            return
        live = [r for r in rows if r["status"] == "ok"]
        with t("sieve"):
            res = self.sieve.score([r["raw_caption"] for r in live], [r["captions"] or [] for r in live])
        for r, x in zip(live, res):
            r["sieve"], r["sieve_mean"], r["sieve_best"] = x.sieve, x.sieve_mean, x.sieve_best


def _prefetch(gen, t, depth: int = 2):
    """Run a generator in a thread, `depth` items ahead, so decoding overlaps the models."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    err: list[BaseException] = []
    stop = threading.Event()

    def run():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # surfaced in the consumer
            err.append(e)
        finally:
            while not stop.is_set():
                try:
                    q.put(end, timeout=0.1)
                    break
                except queue.Full:
                    continue

    th = threading.Thread(target=run, daemon=True)
    th.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = q.get()
            t.add("wait_input", time.perf_counter() - t0)
            if item is end:
                break
            yield item
        if err:
            raise err[0]
    finally:
        stop.set()


class _Timer:
    def __init__(self):
        self.s: dict[str, float] = {}

    def add(self, k, v):
        self.s[k] = round(self.s.get(k, 0.0) + v, 4)

    def __call__(self, k):
        timer = self

        class _C:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *a):
                timer.add(k, time.perf_counter() - self.t0)

        return _C()
