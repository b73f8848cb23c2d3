"""Image bytes -> one uint8 pixel batch per model, decoded in worker processes (or on the GPU).

Each image is decoded once (Pillow, JPEG draft mode, `images.decode`'s safety rules) at the
largest size any model needs, then resized and cropped per model (`pixels.resize_crop`) inside
the worker, which writes the result straight into a shared-memory batch slot. The parent copies
each finished slot once, into pinned memory when the models run on CUDA; normalisation happens on
the model's device. A bad image is a per-sample `ImageError`, never a failed batch, and a decoder
that kills its process costs only that sample. Slots are named after the process that made them
(pid and start time), so a pool removes the segments of runs killed before they could (`kill -9`
of a process group takes the resource tracker too).
"""
from __future__ import annotations

import io
import math
import os
import warnings
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator

from recaption.io.images import DEFAULT_MAX_PIXELS, ImageError, decode
from recaption.io.pixels import PixelSpec, resize_crop

if TYPE_CHECKING:
    import torch

def cpu_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_threads(threads: int, device: str | None = "cpu") -> tuple[int, int]:
    """A worker's CPU share -> (decode processes, torch threads), whose sum never exceeds it.

    On CUDA one thread drives the GPU and every other core decodes (with one core, decoding runs
    in-process). On CPU the models are two orders of magnitude slower than decoding, so they get
    every core and decoding runs in-process, in the producer thread."""
    threads = max(1, int(threads))
    if str(device or "cpu").startswith("cuda") and threads > 1:
        return threads - 1, 1
    return 0, threads


def decode_pixels(data: bytes | None, specs: dict[str, PixelSpec], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  draft_size: int | None = None, keep_image: bool = False):
    """One image's bytes -> ({model: uint8 [3, h, w]}, its decoded HWC RGB array if `keep_image`,
    the stored image's own (width, height), before draft-mode scaling).

    Raises ImageError with a readable reason for anything that cannot become pixels."""
    import numpy as np
    import torch

    if data is None:
        raise ImageError("sample has no image")
    im = decode(data, max_pixels=max_pixels, draft_size=draft_size)
    a = np.asarray(im)
    with warnings.catch_warnings():  # a read-only view, and never written to
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(a).permute(2, 0, 1)  # channels-last: torch's fastest uint8 resize
    try:
        out = {name: resize_crop(x, spec) for name, spec in specs.items()}
    except Exception as e:  # e.g. an image too small or too odd for a kernel
        raise ImageError(f"cannot resize image of {im.size[0]}x{im.size[1]} ({type(e).__name__}: {e})") from None
    return out, (a if keep_image else None), im.info.get("source_size", im.size)


@dataclass
class DecodedBatch:
    """The outcome of one submitted list of image bytes: every index is in `ok` or in `errors`."""

    ok: list[int]  # indices into the submitted list, in order
    errors: dict[int, ImageError]
    pixels: dict[str, "torch.Tensor"]  # model -> uint8 [len(ok), 3, h, w] (pinned for CUDA, or on the GPU)
    images: list | None = None  # RGB PIL images of `ok` (exact processors, vLLM), when asked for
    seconds: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)  # index -> the stored image's (width, height)

    def images_for(self, name: str) -> list["torch.Tensor"]:
        """Per-sample uint8 [3, h, w] pixels of one model: what `Captioner.prepare` and
        `ClipScorer.prepare` accept in place of PIL images (isolation and OOM retries)."""
        return list(self.pixels[name].unbind(0))


class _Decoder:
    """The work of one decode process (or of the parent, in-process): decode into a slot."""

    def __init__(self, specs, max_pixels, draft_size, slots):
        self.specs, self.max_pixels, self.draft, self.slots = specs, max_pixels, draft_size, slots

    def run(self, slot: int, positions: list[int], datas: list, keep: bool) -> list:
        out = []
        views = self.slots[slot]
        for pos, data in zip(positions, datas):
            try:
                px, arr, size = decode_pixels(data, self.specs, max_pixels=self.max_pixels, draft_size=self.draft,
                                              keep_image=keep)
                for name, t in px.items():
                    views[name][pos].copy_(t)
                out.append((None, arr, size))
            except ImageError as e:
                out.append((str(e), None, None))
            except Exception as e:  # a bad sample never stops the batch
                out.append((f"cannot decode image ({type(e).__name__}: {e})", None, None))
        return out


_WORKER: _Decoder | None = None


def _worker_init(layout, specs, max_pixels, draft_size):
    import torch

    torch.set_num_threads(1)  # one process, one core: the share was counted in processes
    global _WORKER
    shms, slots = _attach(layout)
    _WORKER = _Decoder(specs, max_pixels, draft_size, slots)
    _WORKER.shms = shms  # the views die with their mappings: keep both for the process' life


def _worker_run(slot, positions, datas, keep):
    return _WORKER.run(slot, positions, datas, keep)


def _attach(layout, shms=None):
    """Shared-memory slots: [{model: (shm name, shape)}] -> (shm objects, [{model: uint8 tensor}]).

    Spawned workers share the parent's resource tracker, so attaching here registers nothing new
    and the parent's unlink is the one clean-up."""
    import numpy as np
    import torch
    from multiprocessing import shared_memory

    by_name = {s.name: s for s in shms or ()}
    out, slots = [], []
    for slot in layout:
        views = {}
        for name, (shm_name, shape) in slot.items():
            shm = by_name.get(shm_name) or shared_memory.SharedMemory(name=shm_name)
            out.append(shm)
            n, c, h, w = shape  # stored NHWC, as images decode: writes and copies out are plain memcpy
            views[name] = torch.from_numpy(np.ndarray((n, h, w, c), dtype=np.uint8, buffer=shm.buf)).permute(0, 3, 1, 2)
        slots.append(views)
    return out, slots


SHM_PREFIX = "rcp"  # rcp{pid}_{start time}_{random}: whose segment it is, so a later run can tell
SHM_DIR = "/dev/shm"


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), or None when it is not running:
    with its pid, it names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(b")", 1)[1].split()[19].decode()


def shm_name() -> str:
    """A fresh shared-memory name that says which process made it."""
    import secrets

    return f"{SHM_PREFIX}{os.getpid()}_{_start_time(os.getpid()) or 0}_{secrets.token_hex(4)}"


def sweep_orphans() -> list[str]:
    """Remove the decode-pool segments whose owner is gone (killed with -9, its resource tracker
    with it, as a scheduler kills a process group); returns their names. Linux only: elsewhere
    segments have no folder to look in, and the resource tracker is the one clean-up."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    gone = []
    for name in names:
        if not name.startswith(SHM_PREFIX):
            continue
        try:
            pid, start, _ = name[len(SHM_PREFIX):].split("_")
            pid = int(pid)
        except ValueError:
            continue
        if _start_time(pid) == start:
            continue  # its process is alive (the same one: pid and start time agree)
        try:
            os.unlink(os.path.join(SHM_DIR, name))
            gone.append(name)
        except OSError:  # another run swept it first, or it is not ours to remove
            pass
    return gone


def _release(shms):
    for shm in shms:
        try:
            shm.close()
        except BufferError:  # a view is still alive somewhere; the name still goes
            pass
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


@dataclass
class _Pending:
    slot: int
    datas: list
    chunks: list  # (positions, future or inline result)
    gpu: dict = field(default_factory=dict)  # index -> {model: CUDA uint8 [3, h, w]}
    t0: float = 0.0


class DecodePool:
    """Decode batches of image bytes in `workers` processes (0: in the calling thread), `depth`
    batches in flight, results in submission order.

        pool = DecodePool({"caption": cap.pixel_spec(), "clip": clip.pixel_spec()},
                          batch_size=32, workers=decode_procs, device="cuda")
        for batch in pool.map(lists_of_image_bytes):   # DecodedBatch per list
            ...
        pool.close()

    `images=True` also returns the decoded RGB images (for models on the exact processor path);
    `gpu_decode=True` (CUDA only) decodes baseline RGB/grey JPEGs with nvJPEG in this process and
    sends everything else (PNG, WebP, CMYK, progressive, 16-bit, failures) to the CPU workers.
    """

    def __init__(self, specs: dict[str, PixelSpec], *, batch_size: int = 32, workers: int = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None, images: bool = False,
                 device: str | None = "cpu", gpu_decode: bool = False, depth: int = 2):
        from multiprocessing import shared_memory

        self.specs = {k: v for k, v in specs.items() if v is not None}
        self.batch_size, self.workers, self.max_pixels = int(batch_size), max(0, int(workers)), max_pixels
        self.draft = draft_size or max((s.draft_size for s in self.specs.values()), default=None)
        self.keep_images = images
        self.device = str(device or "cpu")
        self.cuda = self.device.startswith("cuda")
        self.gpu_decode = bool(gpu_decode and self.cuda and not images)
        self.depth = max(1, int(depth))
        layout, owned = [], []
        if self.specs:
            sweep_orphans()  # what a killed run left in /dev/shm goes before this one adds its own
        for _ in range(self.depth):
            slot = {}
            for name, spec in self.specs.items():
                shape = (self.batch_size, 3, *spec.size)
                shm = shared_memory.SharedMemory(name=shm_name(), create=True, size=max(1, math.prod(shape)))
                owned.append(shm)
                slot[name] = (shm.name, shape)
            layout.append(slot)
        self._layout = layout
        _, self._slots = _attach(layout, owned)
        self._finalizer = weakref.finalize(self, _release, owned)
        self._free = deque(range(self.depth))
        self._exec = None
        self._local = _Decoder(self.specs, max_pixels, self.draft, self._slots) if self.workers == 0 else None
        self.restarts = 0

    # -- public ----------------------------------------------------------------------------------
    def map(self, batches: Iterable[list]) -> Iterator[DecodedBatch]:
        """Decode each list of image bytes (None: a sample without an image) into a DecodedBatch,
        keeping up to `depth` lists in flight."""
        pending: deque[_Pending] = deque()
        try:
            for datas in batches:
                if len(pending) >= self.depth:
                    yield self._collect(pending.popleft())
                pending.append(self._submit(list(datas)))
            while pending:
                yield self._collect(pending.popleft())
        finally:
            self._abandon(pending)

    def _abandon(self, pending):
        """A generator left early: cancel what has not started, and let the rest finish before its
        slot is reused, so no late write lands in a later batch."""
        from concurrent.futures import wait

        for p in pending:
            futs = [f for _, f in p.chunks if not isinstance(f, list)]
            wait([f for f in futs if not f.cancel()])
            self._free.append(p.slot)

    def decode(self, datas: list) -> DecodedBatch:
        """One list, decoded now."""
        return self._collect(self._submit(list(datas)))

    def close(self):
        """Stop the workers and free the shared memory."""
        if self._exec is not None:
            self._exec.shutdown(wait=True, cancel_futures=True)
            self._exec = None
        self._slots = self._local = None
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- internals -------------------------------------------------------------------------------
    def _executor(self):
        if self._exec is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn: a forked child would inherit a CUDA context and the parent's threads
            self._exec = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_worker_init,
                                             initargs=(self._layout, self.specs, self.max_pixels, self.draft))
        return self._exec

    def _restart(self):
        if self._exec is not None:
            self._exec.shutdown(wait=False, cancel_futures=True)
        self._exec = None
        self.restarts += 1

    def _submit(self, datas: list) -> _Pending:
        import time

        if len(datas) > self.batch_size:
            raise ValueError(f"a batch of {len(datas)} images exceeds the pool's batch size {self.batch_size}")
        if not self._free:
            raise RuntimeError("no free batch slot: collect results before submitting more")
        p = _Pending(self._free.popleft(), datas, [], t0=time.perf_counter())
        todo = list(range(len(datas)))
        if self.gpu_decode and self.specs:
            p.gpu, todo = self._gpu_decode(datas, todo)
        if self.workers == 0 or not todo:
            if todo:
                p.chunks.append((todo, self._local.run(p.slot, todo, [datas[i] for i in todo], self.keep_images)))
            return p
        size = max(1, math.ceil(len(todo) / (2 * self.workers)))  # two chunks per worker: even finish
        for s in range(0, len(todo), size):
            pos = todo[s:s + size]
            p.chunks.append((pos, self._send(p.slot, pos, [datas[i] for i in pos])))
        return p

    def _send(self, slot, pos, datas):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._executor().submit(_worker_run, slot, pos, datas, self.keep_images)
        except BrokenProcessPool:  # a worker died since the last batch: start fresh ones
            self._restart()
            return self._executor().submit(_worker_run, slot, pos, datas, self.keep_images)

    def _results(self, p: _Pending, pos: list[int], fut) -> list:
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(fut, list):
            return fut
        try:
            return fut.result()
        except BrokenProcessPool:
            return self._isolate(p, pos)

    def _isolate(self, p: _Pending, pos: list[int]) -> list:
        """A decoder killed its process: redo this chunk one image at a time in fresh workers, so
        only the image that kills a worker again is lost."""
        from concurrent.futures.process import BrokenProcessPool

        out = []
        for i in pos:
            try:
                out += self._send(p.slot, [i], [p.datas[i]]).result()
            except BrokenProcessPool:
                self._restart()
                out.append(("the decoder process died on this image (crash in an image library)", None, None))
        return out

    def _collect(self, p: _Pending) -> DecodedBatch:
        import time

        import torch

        status: dict[int, tuple] = {i: (None, None, sz) for i, (_, sz) in p.gpu.items()}
        p.gpu = {i: px for i, (px, _) in p.gpu.items()}
        for pos, fut in p.chunks:
            for i, r in zip(pos, self._results(p, pos, fut)):
                status[i] = r
        ok = [i for i in range(len(p.datas)) if status[i][0] is None]
        errors = {i: ImageError(status[i][0]) for i in range(len(p.datas)) if status[i][0] is not None}
        cpu_ok = [i for i in ok if i not in p.gpu]
        pixels = {}
        for name, spec in self.specs.items():
            src = self._slots[p.slot][name].permute(0, 2, 3, 1)  # the NHWC storage
            idx = torch.tensor(cpu_ok, dtype=torch.long)
            if not p.gpu:  # the one copy out of the slot; [N, 3, h, w] in channels-last memory
                out = torch.empty((len(ok), *spec.size, 3), dtype=torch.uint8, pin_memory=self.cuda)
                pixels[name] = torch.index_select(src, 0, idx, out=out).permute(0, 3, 1, 2)
                continue
            out = torch.empty((len(ok), 3, *spec.size), dtype=torch.uint8, device=self.device)
            where = {i: k for k, i in enumerate(ok)}
            if cpu_ok:
                host = torch.index_select(src, 0, idx).pin_memory()
                out[[where[i] for i in cpu_ok]] = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            for i, px in p.gpu.items():
                out[where[i]] = px[name]
            pixels[name] = out
        images = None
        if self.keep_images:
            from PIL import Image

            images = [Image.fromarray(status[i][1], "RGB") for i in ok]
        self._free.append(p.slot)
        return DecodedBatch(ok, errors, pixels, images, {"decode_wall": time.perf_counter() - p.t0},
                            {i: status[i][2] for i in ok})

    def _gpu_decode(self, datas: list, idx: list[int]):
        """nvJPEG for what it decodes well; the rest (and its failures) go back to the CPU workers."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        gpu_idx = [i for i in idx if _gpu_decodable(datas[i], self.max_pixels)]
        rest = [i for i in idx if i not in set(gpu_idx)]
        if not gpu_idx:
            return {}, rest
        with warnings.catch_warnings():  # read-only bytes, only read
            warnings.simplefilter("ignore", UserWarning)
            data = [torch.frombuffer(datas[i], dtype=torch.uint8) for i in gpu_idx]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            decoded = []
            for d in data:  # one bad stream fails the batched call: find it
                try:
                    decoded.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    decoded.append(None)
        out, failed = {}, []
        for i, im in zip(gpu_idx, decoded):
            if im is None or im.ndim != 3 or im.shape[0] != 3:
                failed.append(i)
                continue
            out[i] = ({name: resize_crop(im, spec) for name, spec in self.specs.items()}, (im.shape[2], im.shape[1]))
        return out, sorted(rest + failed)


def _gpu_decodable(data, max_pixels: int) -> bool:
    """Baseline 8-bit RGB or grey JPEG within the pixel limit (read from the header alone)."""
    from PIL import Image

    if not data or data[:2] != b"\xff\xd8":
        return False
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        return (im.format == "JPEG" and im.mode in ("RGB", "L") and w * h <= max_pixels
                and not im.info.get("progressive") and not im.info.get("progression"))
    except Exception:
        return False
