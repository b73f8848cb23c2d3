"""Decoding in worker processes: every sample comes back as pixels or an error with a reason."""
import io
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from recaption.io.decode import DecodePool, decode_pixels, plan_threads
from recaption.io.images import decode
from recaption.io.pixels import PixelSpec

PHOTOS = sorted((Path(__file__).parents[1] / "data" / "photos").glob("*.jpg"))
SPECS = {"caption": PixelSpec("squash", (96, 96), mean=(0.5,) * 3, std=(0.5,) * 3),
         "clip": PixelSpec("shortest", (64,), crop=(64, 64))}


def _enc(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def mixed() -> tuple[list, dict[int, str]]:
    """Photos and every awkward input, with the reason fragment each bad one must carry."""
    photo = Image.open(PHOTOS[0]).convert("RGB")
    p16 = Image.new("I;16", (70, 50))
    p16.putpixel((0, 0), 65535)
    datas = [p.read_bytes() for p in PHOTOS] + [
        _enc(photo, "PNG"),
        _enc(photo, "WEBP"),
        _enc(photo.convert("CMYK"), "JPEG"),
        _enc(photo, "JPEG", progressive=True),
        _enc(p16, "PNG"),
        _enc(photo.convert("L"), "JPEG"),
        b"",
        b"\xff\xd8\xff\xe0garbage" * 10,
        PHOTOS[1].read_bytes()[:300],
        None,
        _enc(Image.new("RGB", (1000, 1000)), "PNG"),
    ]
    n = len(PHOTOS) + 6
    bad = {n: "empty", n + 1: "decode", n + 2: "decode", n + 3: "no image", n + 4: "over the limit"}
    return datas, bad


def check(batch, datas, bad):
    assert sorted(batch.ok + list(batch.errors)) == list(range(len(datas)))  # every sample, once
    for i, frag in bad.items():
        assert frag in str(batch.errors[i]) or (frag == "decode" and "cannot" in str(batch.errors[i])), i
    assert batch.ok == [i for i in range(len(datas)) if i not in bad]
    assert batch.pixels["caption"].shape == (len(batch.ok), 3, 96, 96)
    assert batch.pixels["clip"].shape == (len(batch.ok), 3, 64, 64)
    assert batch.pixels["clip"].dtype == torch.uint8


@pytest.mark.slow
def test_processes_and_in_process_give_the_same_pixels_and_errors():
    datas, bad = mixed()
    with DecodePool(SPECS, batch_size=32, workers=0, max_pixels=400_000) as p0:
        a = p0.decode(datas)
    with DecodePool(SPECS, batch_size=32, workers=2, max_pixels=400_000) as p2:
        b = p2.decode(datas)
    for batch in (a, b):
        check(batch, datas, bad)
    assert a.ok == b.ok and {k: str(v) for k, v in a.errors.items()} == {k: str(v) for k, v in b.errors.items()}
    for name in SPECS:
        assert torch.equal(a.pixels[name], b.pixels[name])
    one, _, _ = decode_pixels(datas[0], SPECS, draft_size=96)  # the pool drafts to its largest need
    assert torch.equal(a.pixels["clip"][0], one["clip"])


@pytest.mark.slow
def test_batches_come_back_in_order_with_images_when_asked():
    datas = [p.read_bytes() for p in PHOTOS]
    lists = [[datas[i % len(datas)], datas[(i + 1) % len(datas)], b"bad" if i % 3 == 0 else datas[2]]
             for i in range(7)]
    with DecodePool(SPECS, batch_size=3, workers=2, images=True, depth=3) as pool:
        got = list(pool.map(lists))
    with DecodePool(SPECS, batch_size=3, workers=0) as ref:
        want = [ref.decode(x) for x in lists]
    assert len(got) == 7
    for g, w, src in zip(got, want, lists):
        assert g.ok == w.ok and torch.equal(g.pixels["clip"], w.pixels["clip"])
        assert [im.size for im in g.images] == [decode(src[i], draft_size=96).size for i in g.ok]  # drafted
        assert all(im.mode == "RGB" for im in g.images)


def test_exact_path_pool_returns_images_only():
    datas, bad = mixed()
    with DecodePool({}, batch_size=32, workers=1, images=True, draft_size=224, max_pixels=400_000) as pool:
        b = pool.decode(datas)
    assert b.pixels == {} and len(b.images) == len(b.ok) == len(datas) - len(bad)


@pytest.mark.slow
def test_a_dead_worker_costs_no_sample():
    datas = [p.read_bytes() for p in PHOTOS]
    with DecodePool(SPECS, batch_size=8, workers=2) as pool:
        want = pool.decode(datas)
        for proc in list(pool._exec._processes.values()):
            os.kill(proc.pid, signal.SIGKILL)  # as a crashing image library would
        time.sleep(0.5)
        got = pool.decode(datas)
        assert pool.restarts >= 1
    assert got.ok == want.ok and torch.equal(got.pixels["caption"], want.pixels["caption"])


def test_an_oversized_batch_is_refused():
    with DecodePool(SPECS, batch_size=2) as pool, pytest.raises(ValueError, match="exceeds"):
        pool.decode([b"", b"", b""])


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_decode_processes_and_torch_threads_never_exceed_the_share(device):
    for share in range(1, 65):
        procs, threads = plan_threads(share, device)
        assert procs + threads <= share and threads >= 1 and procs >= 0
        if device == "cuda":
            assert procs == share - 1  # every core but the GPU's driver decodes
    assert plan_threads(16, "cuda") == (15, 1) and plan_threads(1, "cuda") == (0, 1)
    assert plan_threads(16, "cpu") == (0, 16)  # CPU models need the cores; decoding is ~1% of the work


@pytest.mark.gpu
def test_gpu_jpeg_decoding_matches_cpu_and_falls_back():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    datas, bad = mixed()
    with DecodePool(SPECS, batch_size=32, workers=1, device="cuda", gpu_decode=True, max_pixels=400_000) as g:
        got = g.decode(datas)
    with DecodePool(SPECS, batch_size=32, workers=0, device="cuda", max_pixels=400_000) as c:
        want = c.decode(datas)
    check(got, datas, bad)
    assert got.pixels["clip"].is_cuda and want.pixels["clip"].is_pinned()
    for name in SPECS:
        d = (got.pixels[name].float().cpu() - want.pixels[name].float()).abs()
        assert d.mean() < 3  # nvJPEG's IDCT and full-size decoding vs Pillow's draft mode


@pytest.mark.slow
def test_a_batch_left_early_does_not_leak_into_the_next():
    datas = [p.read_bytes() for p in PHOTOS]
    with DecodePool(SPECS, batch_size=8, workers=2, depth=2) as pool:
        it = pool.map([datas, datas[::-1], datas])
        next(it)
        it.close()  # a shard that failed mid-way: two batches were still in flight
        got = pool.decode(datas[:2])
        again = [pool.decode(datas[:2]) for _ in range(3)]
    for g in again:
        assert torch.equal(g.pixels["caption"], got.pixels["caption"])
    assert len(pool._free) == 2


_HOLDER = """
import multiprocessing, os, sys, time
from recaption.io.decode import SHM_PREFIX, DecodePool
from recaption.io.pixels import PixelSpec
pool = DecodePool({"m": PixelSpec("squash", (32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)}, batch_size=4, workers=1)
pool.decode([open(sys.argv[1], "rb").read()])
mine = {os.getpid()} | {p.pid for p in multiprocessing.active_children()}
print("ready", *[n for n in os.listdir("/dev/shm") if any(n.startswith(f"{SHM_PREFIX}{p}_") for p in mine)],
      flush=True)
time.sleep(120)
"""


@pytest.mark.slow  # starts a process group and kills it
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="segments are files in /dev/shm on Linux only")
def test_a_run_killed_with_its_process_group_leaves_nothing_the_next_run_keeps(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(PHOTOS[0])], stdout=subprocess.PIPE, env=env,
                            start_new_session=True)  # its own group, killed whole, as a scheduler does
    try:
        said = proc.stdout.readline().split()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # the segments it named as its own (another recaption run on the machine, a second test suite
    # say, may sweep them first: they are named by owner, not told apart by when they appeared)
    assert said[:1] == [b"ready"]
    held = {n.decode() for n in said[1:]}
    assert held, "the killed run held shared memory"
    time.sleep(0.5)  # its decode worker, resource tracker included, dies with the group
    with DecodePool(SPECS, batch_size=2, workers=0) as pool:  # the next run
        assert pool.decode([PHOTOS[0].read_bytes()]).ok == [0]
    assert not held & set(os.listdir("/dev/shm")), "segments of the killed run survived the next one"
