"""Read and decode one shard, a batch ahead of the models.

A background thread streams the shard, decodes each batch's images in a small pool (at the
largest size any model needs), runs the models' image-only preparation, and queues the batch.
Closing the iterator (or leaving its `with` block early) stops that thread, shuts the pool and
closes the shard, so nothing is left to the garbage collector.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from recaption.io.images import DEFAULT_MAX_PIXELS, ImageError, decode
from recaption.io.shards import DEFAULT_IMAGE_KEYS, ReadFailure, ReadOptions, iter_shard

log = logging.getLogger("recaption")


@dataclass
class DecodeOptions:
    """How images are read and decoded."""

    image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft_size: int | None = None  # decode JPEGs at no less than this size (draft mode)
    batch_size: int = 32
    workers: int = 2  # decode threads


@dataclass
class Batch:
    """Records of one batch and their images (a PIL image, an ImageError, or None for a read failure)."""

    records: list
    images: list
    prepared: dict = field(default_factory=dict)  # model inputs for the decodable images, if prepared

    @property
    def good(self) -> list[int]:
        """Positions of the samples whose image decoded."""
        return [i for i, im in enumerate(self.images) if im is not None and not isinstance(im, ImageError)]


class ShardBatches:
    """Iterate a shard as decoded batches, `depth` batches ahead; use as a context manager."""

    def __init__(self, url: str, opts: DecodeOptions, prepare: Callable[[list], dict] | None = None,
                 depth: int = 2, on_wait: Callable[[float], None] | None = None):
        self.url, self.opts, self.prepare, self.on_wait = url, opts, prepare, on_wait
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._err: list[BaseException] = []
        self._thread: threading.Thread | None = None

    # -- producer (background thread) --------------------------------------------------------
    def _decode(self, rec):
        if isinstance(rec, ReadFailure):
            return None
        try:
            return decode(rec.image_bytes, max_pixels=self.opts.max_pixels, draft_size=self.opts.draft_size)
        except ImageError as e:
            return e

    def _batches(self, pool):
        records = iter_shard(self.url, ReadOptions(image_keys=self.opts.image_keys))
        try:
            buf = []
            for rec in records:
                buf.append(rec)
                if len(buf) >= self.opts.batch_size:
                    yield self._make(pool, buf)
                    buf = []
                if self._stop.is_set():
                    return
            if buf:
                yield self._make(pool, buf)
        finally:
            records.close()  # closes the tar stream at once, also on early exit

    def _make(self, pool, recs) -> Batch:
        batch = Batch(recs, list(pool.map(self._decode, recs)))
        if self.prepare is not None and batch.good:
            try:
                batch.prepared = self.prepare([batch.images[i] for i in batch.good])
            except Exception as e:  # the model thread falls back to its own path, where bad samples are isolated
                log.warning("preparing a batch of %s failed (%s: %s); the models will prepare it themselves",
                            self.url, type(e).__name__, e)
                batch.prepared = {}
        return batch

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        pool = ThreadPoolExecutor(max(1, self.opts.workers), thread_name_prefix="recaption-decode")
        try:
            gen = self._batches(pool)
            try:
                for b in gen:
                    if not self._put(b):
                        break
            finally:
                gen.close()
        except BaseException as e:  # surfaced in the consumer
            self._err.append(e)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self._put(_END)

    # -- consumer ----------------------------------------------------------------------------
    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="recaption-read", daemon=True)
        self._thread.start()
        return self

    def __iter__(self):
        while True:
            t0 = time.perf_counter()
            item = self._q.get()
            if self.on_wait:
                self.on_wait(time.perf_counter() - t0)
            if item is _END:
                break
            yield item
        if self._err:
            raise self._err[0]

    def close(self):
        """Stop the reader thread and wait for it (it closes the pool and the shard)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __exit__(self, *exc):
        self.close()


_END = object()
