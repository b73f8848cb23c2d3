"""`scripts/bench.py --mode input`: prepared images/s of the BLIP + CLIP input path, per CPU core.

Real-size JPEGs (512x384 and 1024x768) are made from the bundled photographs (tests/data/photos).
The models are tiny random-weight BLIP and open_clip models with the real models' input settings
(BLIP/BLIP-large processor: 384 square, bicubic; open_clip ViT-B/32 and ViT-L/14: 224 shortest
side + centre crop, bicubic), so `Captioner.prepare` and `ClipScorer.prepare` run exactly as for the
real ones. Each row runs pinned to 1, then 2 cores (sched_setaffinity; worker processes inherit it):

* today: decode in 2 threads, then the BLIP processor and open_clip's transform in one thread,
  as stages/annotate.py does (normalised float32 out);
* fast: io/decode.DecodePool, decoding and resizing in worker processes into uint8 batches
  (normalised later on the model's device); at 1 core in-process, at k cores k processes;
* fast + normalise on CPU: the same plus float32 normalisation here (what a CPU-only run adds);
* fast, CLIP input only: what `recaption score` (CLIP without a captioner) needs;
* fast, nvJPEG (with --device cuda): JPEGs decoded on the GPU, k-1 CPU processes for the rest.

Also prints the pixel difference between the fast path and each model's own processor.
"""
from __future__ import annotations

import io
import json
import os
import platform
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))
SIZES = {"512x384": (512, 384), "1024x768": (1024, 768)}


def make_jpegs(n: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """n distinct JPEGs (random crops of the photos at the target aspect, some mirrored), quality 90."""
    from PIL import Image, ImageOps

    rng = random.Random(seed)
    srcs = [Image.open(p).convert("RGB") for p in PHOTOS]
    w, h = size
    out = []
    for i in range(n):
        im = srcs[i % len(srcs)]
        cw = min(im.width, int(im.height * w / h))
        ch = int(cw * h / w)
        f = rng.uniform(0.75, 1.0)
        cw, ch = int(cw * f), int(ch * f)
        x, y = rng.randrange(im.width - cw + 1), rng.randrange(im.height - ch + 1)
        im2 = im.crop((x, y, x + cw, y + ch)).resize(size, Image.BICUBIC)
        if rng.random() < 0.5:
            im2 = ImageOps.mirror(im2)
        buf = io.BytesIO()
        im2.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build(root: Path) -> dict:
    """Tiny models with real input settings: BLIP processor at 384, open_clip at 224 and 336."""
    from recaption.demo.tiny_models import build_blip, build_clip

    return {"blip": str(build_blip(root / "blip384", image_size=384)),
            "clip": build_clip(root / "clip224", image_size=224),
            "clip336": build_clip(root / "clip336", image_size=336)}


def today(datas, cap, clip, batch: int, cores: int) -> None:
    import torch

    from recaption.io.images import decode

    torch.set_num_threads(cores)
    draft = max(cap.image_size, clip.image_size)
    with ThreadPoolExecutor(2) as pool:  # AnnotateSpec.decode_workers
        for i in range(0, len(datas), batch):
            ims = list(pool.map(lambda d: decode(d, draft_size=draft), datas[i:i + batch]))
            cap.prepare(ims, [None] * len(ims))
            clip.prepare(ims)


def fast(pool, datas, batch: int, normalise=None) -> None:
    from recaption.io.pixels import normalize

    b = None
    for b in pool.map(datas[i:i + batch] for i in range(0, len(datas), batch)):
        if normalise:
            for name, spec in normalise.items():
                normalize(b.pixels[name], spec)
    if b is not None and any(t.is_cuda for t in b.pixels.values()):
        import torch

        torch.cuda.synchronize()  # nvJPEG and GPU resizes run asynchronously: count them


def rate(fn, n: int, repeats: int = 3) -> float:
    """Images/s of the best of `repeats` timed runs, after a warm-up (worker processes, kernels,
    allocator): on a machine shared with other jobs the best run is the least disturbed one."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return n / min(ts)


def pixel_diffs(models: dict, sets: dict[str, list[bytes]]) -> dict:
    """Max and mean |fast - processor| in 0..255 levels, per model input, over every image given."""
    import open_clip
    import torch
    from transformers import AutoProcessor, BlipImageProcessor

    from recaption.io.decode import decode_pixels
    from recaption.io.images import decode
    from recaption.io.pixels import from_hf_image_processor, from_open_clip, normalize

    blip_ip = AutoProcessor.from_pretrained(models["blip"]).image_processor
    cases = {"BLIP, BLIP-large (transformers processor, 384)": ("hf", blip_ip),
             "BLIP-2 (transformers processor, 224)": ("hf", BlipImageProcessor(size={"height": 224, "width": 224}))}
    for key, label in (("clip", "CLIP ViT-B/32, ViT-L/14, CoCa (open_clip transform, 224)"),
                       ("clip336", "CLIP ViT-L/14-336 (open_clip transform, 336)")):
        m, _, pre = open_clip.create_model_and_transforms(models[key])
        cases[label] = ("oc", (m, pre))
    out = {}
    images = [d for ds in sets.values() for d in ds]
    for label, (kind, obj) in cases.items():
        spec = from_hf_image_processor(obj) if kind == "hf" else from_open_clip(obj[0])
        draft = spec.draft_size
        mx, tot, cnt, exact_equal = 0.0, 0.0, 0, 0
        std = torch.tensor(spec.std).view(3, 1, 1)
        for d in images:
            im = decode(d, draft_size=draft)
            want = (obj(images=im, return_tensors="pt")["pixel_values"][0] if kind == "hf" else obj[1](im))
            px, _, _ = decode_pixels(d, {"m": spec}, draft_size=draft)
            diff = (normalize(px["m"][None], spec)[0] - want).abs() * std / spec.scale
            mx, tot, cnt = max(mx, float(diff.max())), tot + float(diff.sum()), cnt + diff.numel()
            exact_equal += int(float(diff.max()) < 0.01)
        out[label] = {"max": round(mx, 3), "mean": round(tot / cnt, 4), "images": len(images),
                      "images_identical": exact_equal}
    return out


def run(a) -> dict:
    import torch

    from recaption.captioners import build_captioner, load_preset
    from recaption.io.decode import DecodePool
    from recaption.scoring.clip import ClipConfig, ClipScorer

    out_json = a.json if a.json != "bench-results.json" else "bench-input.json"
    avail = sorted(os.sched_getaffinity(0))
    cores = [int(c) for c in a.cores.split(",") if int(c) <= len(avail)]
    device = a.device or "cpu"
    root = Path(tempfile.mkdtemp(prefix="recaption-bench-input-"))
    models = build(root)
    cap = build_captioner(load_preset(models["blip"], device="cpu", dtype="float32"))
    clip = ClipScorer(ClipConfig(models["clip"], device="cpu", dtype="float32"))
    specs = {"caption": cap.pixel_spec(), "clip": clip.pixel_spec()}
    sets = {name: make_jpegs(a.images, size, seed=i) for i, (name, size) in enumerate(SIZES.items())}
    load0 = os.getloadavg()
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "device": device, "load_before": [round(x, 2) for x in load0]},
           "config": {"images_per_size": a.images, "batch": a.batch_size, "cores": cores,
                      "caption_input": "BLIP 384x384 bicubic", "clip_input": "open_clip 224 shortest + crop"},
           "images_per_s": {}}
    for name, datas in sets.items():
        rows = res["images_per_s"][name] = {}
        for k in cores:
            os.sched_setaffinity(0, avail[:k])
            r = rows.setdefault("today", {})
            r[k] = rate(lambda: today(datas, cap, clip, a.batch_size, k), len(datas))
            torch.set_num_threads(1)
            with DecodePool(specs, batch_size=a.batch_size, workers=0 if k == 1 else k, device=device) as pool:
                rows.setdefault("fast", {})[k] = rate(lambda: fast(pool, datas, a.batch_size), len(datas))
                rows.setdefault("fast + normalise on CPU", {})[k] = rate(
                    lambda: fast(pool, datas, a.batch_size, normalise=specs), len(datas))
            with DecodePool({"clip": specs["clip"]}, batch_size=a.batch_size, workers=0 if k == 1 else k,
                            device=device) as pool:  # `recaption score`: CLIP's input alone
                rows.setdefault("fast, CLIP input only", {})[k] = rate(lambda: fast(pool, datas, a.batch_size),
                                                                       len(datas))
            if device.startswith("cuda"):
                with DecodePool(specs, batch_size=a.batch_size, workers=max(1, k - 1), device=device,
                                gpu_decode=True) as pool:
                    rows.setdefault("fast, nvJPEG", {})[k] = rate(lambda: fast(pool, datas, a.batch_size), len(datas))
            print(name, k, {p: round(v[k], 1) for p, v in rows.items()}, flush=True)
        os.sched_setaffinity(0, avail)
    res["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    res["pixel_diff_levels"] = pixel_diffs(models, {"photos": [p.read_bytes() for p in PHOTOS],
                                                    **{k: v[:40] for k, v in sets.items()}})
    Path(out_json).write_text(json.dumps(res, indent=2))
    print(f"\ninput path, prepared images/s (BLIP 384 + CLIP 224 inputs from one decode; load "
          f"{load0[0]:.2f} before, {res['machine']['load_after'][0]:.2f} after)")
    print(f"{'JPEGs':<10}{'path':<26}" + "".join(f"{f'{k} core' + ('s' if k > 1 else ''):>10}" for k in cores)
          + f"{'per core':>10}")
    for name, rows in res["images_per_s"].items():
        for path, v in rows.items():
            per = v[max(cores)] / max(cores)
            print(f"{name:<10}{path:<26}" + "".join(f"{v[k]:>10.0f}" for k in cores) + f"{per:>10.0f}")
    print("\nfast path vs each model's own processor, |difference| in 0..255 levels:")
    for label, d in res["pixel_diff_levels"].items():
        print(f"  {label:<58} max {d['max']:.2f}  mean {d['mean']:.4f}  "
              f"identical {d['images_identical']}/{d['images']}")
    print(f"JSON: {out_json}")
    return res
