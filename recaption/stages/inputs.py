"""Read and decode one shard, a batch ahead of the models.

A background thread streams the shard, hands each batch's image bytes to the worker's
`DecodePool` (decode once, then each model's resize and crop as uint8 tensor ops, in decode
processes or in this thread), runs the image-only preparation of models that keep their own
processor, and queues the batch. Closing the iterator (or leaving its `with` block early) stops
that thread, which closes the shard and returns the pool's slots, so nothing is left to the
garbage collector.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from recaption.io.decode import DecodedBatch, DecodePool
from recaption.io.images import DEFAULT_MAX_PIXELS, ImageError
from recaption.io.pixels import PREPROCESS  # noqa: F401  (the choices, for callers)
from recaption.io.shards import DEFAULT_IMAGE_KEYS, ReadFailure, ReadLimits, ReadOptions, iter_shard

log = logging.getLogger("recaption")


@dataclass
class DecodeOptions:
    """How images are read and decoded."""

    image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int | None = None  # images per batch (None: the captioner preset's, else 64; set by the API)
    preprocess: str = "fast"  # fast: batched uint8 tensor ops; exact: each model's own processor
    gpu_decode: bool = False  # nvJPEG for baseline JPEGs when the models run on CUDA
    limits: ReadLimits = field(default_factory=ReadLimits)  # what one sample may cost to read


@dataclass
class Batch:
    """Records of one batch and what their images became."""

    records: list
    decoded: DecodedBatch
    prepared: dict = field(default_factory=dict)  # model -> inputs prepared by its own processor

    def __post_init__(self):
        self._row = {i: k for k, i in enumerate(self.decoded.ok)}

    @property
    def good(self) -> list[int]:
        """Positions of the samples whose image decoded, in order."""
        return self.decoded.ok

    def image_error(self, i: int) -> ImageError | None:
        """Why record i has no decoded image (None when it has one, or is a read failure)."""
        return self.decoded.errors.get(i)

    def source_size(self, i: int):
        """The stored image's (width, height), for a decoded record."""
        return self.decoded.sizes.get(i)

    def inputs(self, name: str, positions: list[int]) -> list:
        """Per-sample inputs of one model for some decoded positions: uint8 pixels on the fast
        path, PIL images for a model with its own processor (what `prepare` takes either way)."""
        if name in self.decoded.pixels:
            px = self.decoded.pixels[name]
            return [px[self._row[i]] for i in positions]
        return [self.decoded.images[self._row[i]] for i in positions]

    def batched(self, name: str):
        """One model's inputs for all decoded samples at once: uint8 pixels, or prepared inputs."""
        return self.decoded.pixels.get(name, self.prepared.get(name))


class ShardBatches:
    """Iterate a shard as decoded batches, `depth` batches ahead; use as a context manager."""

    def __init__(self, url: str, opts: DecodeOptions, pool: DecodePool,
                 prepare: dict[str, Callable[[list], object]] | None = None, depth: int = 2,
                 on_wait: Callable[[float], None] | None = None):
        self.url, self.opts, self.pool, self.prepare, self.on_wait = url, opts, pool, prepare or {}, on_wait
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._err: list[BaseException] = []
        self._thread: threading.Thread | None = None

    # -- producer (background thread) --------------------------------------------------------
    def _record_lists(self, records, out: list):
        buf = []
        for rec in records:
            buf.append(rec)
            if len(buf) >= self.opts.batch_size:
                out.append(buf)
                yield [_image_bytes(r) for r in buf]
                buf = []
            if self._stop.is_set():
                return
        if buf:
            out.append(buf)
            yield [_image_bytes(r) for r in buf]

    def _make(self, recs, decoded: DecodedBatch) -> Batch:
        batch = Batch(recs, decoded)
        if self.prepare and decoded.ok:
            try:
                batch.prepared = {name: fn(decoded.images) for name, fn in self.prepare.items()}
            except Exception as e:  # the model thread falls back to per-sample inputs, where bad ones are isolated
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
        records = iter_shard(self.url, ReadOptions(image_keys=self.opts.image_keys, limits=self.opts.limits))
        lists: list = []
        decoded = self.pool.map(self._record_lists(records, lists))
        try:
            for d in decoded:
                if not self._put(self._make(lists.pop(0), d)):
                    break
        except BaseException as e:  # surfaced in the consumer
            self._err.append(e)
        finally:
            decoded.close()  # waits for decodes in flight, frees their slots
            records.close()  # closes the tar stream at once, also on early exit
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
        """Stop the reader thread and wait for it (it closes the shard and frees the pool's slots)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __exit__(self, *exc):
        self.close()


def _image_bytes(rec) -> bytes | None:
    """What the decoder gets for a record: its image bytes, or None (a read failure: no image)."""
    return rec.image_bytes if not isinstance(rec, ReadFailure) and rec.image_field else None


_END = object()
