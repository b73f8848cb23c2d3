"""The fast input path against each model's own processor, on real photographs."""
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from recaption.io.decode import DecodePool, decode_pixels
from recaption.io.images import decode
from recaption.io.pixels import PixelSpec, from_hf_image_processor, from_open_clip, normalize, specs_for

PHOTOS = sorted((Path(__file__).parents[1] / "data" / "photos").glob("*.jpg"))


def photos() -> list[bytes]:
    assert len(PHOTOS) >= 5
    return [p.read_bytes() for p in PHOTOS]


def fast(data: bytes, spec: PixelSpec, draft: int) -> torch.Tensor:
    px, _, _ = decode_pixels(data, {"m": spec}, draft_size=draft)
    return normalize(px["m"][None], spec)[0]


def levels(a: torch.Tensor, b: torch.Tensor, spec: PixelSpec) -> torch.Tensor:
    """|a - b| of two normalised images, back in 0..255 pixel levels."""
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (a - b).abs() * std / spec.scale


@pytest.fixture(scope="module")
def blip(tiny_models):
    from recaption.captioners import build_captioner, load_preset

    return build_captioner(load_preset(tiny_models["blip"], device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def clip(tiny_models):
    from recaption.scoring.clip import ClipScorer

    return ClipScorer(model=tiny_models["clip"], device="cpu", dtype="float32")


def test_specs_are_read_from_the_models_own_configs(blip, clip, tiny_models):
    from recaption.captioners import build_captioner, load_preset

    b = blip.pixel_spec()
    ip = blip.processor.image_processor
    assert (b.resize, b.size, b.interpolation, b.crop) == ("squash", (64, 64), "bicubic", None)
    assert b.mean == pytest.approx(ip.image_mean) and b.std == pytest.approx(ip.image_std)
    assert b.scale == pytest.approx(ip.rescale_factor)
    c = clip.pixel_spec()
    assert (c.resize, c.resize_size, c.crop, c.interpolation) == ("shortest", (64,), (64, 64), "bicubic")
    assert c.mean == pytest.approx(open_clip.get_model_preprocess_cfg(clip.model)["mean"])
    coca = build_captioner(load_preset(tiny_models["coca"], device="cpu", dtype="float32"))
    assert coca.pixel_spec() == c  # the same open_clip transform config
    assert specs_for({"caption": blip, "clip": clip}, "exact") == {"caption": None, "clip": None}
    assert specs_for({"caption": blip, "clip": clip, "none": None}) == {"caption": b, "clip": c}


def test_specs_follow_other_processor_settings():
    from transformers import BlipImageProcessor

    s = from_hf_image_processor(BlipImageProcessor(size={"shortest_edge": 256}, do_center_crop=True,
                                                   crop_size={"height": 224, "width": 224}, resample=2))
    assert (s.resize, s.resize_size, s.crop, s.crop_floor, s.interpolation) == ("shortest", (256,), (224, 224),
                                                                                True, "bilinear")
    assert from_hf_image_processor(BlipImageProcessor(do_pad=True)) is None  # not reproduced: exact path
    assert from_hf_image_processor(BlipImageProcessor(resample=1)) is None  # Lanczos

    class Visual:
        preprocess_cfg = {"size": 256, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
                          "resize_mode": "squash"}

    class Model:
        visual = Visual()

    assert from_open_clip(Model()) == PixelSpec("squash", (256, 256), interpolation="bilinear", scale=1 / 255,
                                                mean=(0.5,) * 3, std=(0.5,) * 3)
    Visual.preprocess_cfg = dict(Visual.preprocess_cfg, resize_mode="longest")
    assert from_open_clip(Model()) is None


@pytest.mark.parametrize("size", [384, 224])
def test_blip_fast_pixels_equal_the_processor_on_photos(size):
    """Real BLIP/BLIP-2 processor settings (384 and 224, bicubic, OpenAI mean/std)."""
    from transformers import BlipImageProcessor

    ip = BlipImageProcessor(size={"height": size, "width": size})
    spec = from_hf_image_processor(ip)
    for data in photos():
        want = ip(images=decode(data, draft_size=size), return_tensors="pt")["pixel_values"][0]
        d = levels(fast(data, spec, size), want, spec)
        assert d.max() < 0.01  # same uint8 kernels in the same order: equal up to float rounding


@pytest.mark.parametrize("size", [224, 336])
def test_open_clip_fast_pixels_match_its_transform_on_photos(size):
    """open_clip's inference transform (Pillow bicubic, shortest side, centre crop) at real sizes."""
    pre = open_clip.image_transform(size, is_train=False)
    spec = PixelSpec("shortest", (size,), crop=(size, size), scale=1 / 255, mean=open_clip.OPENAI_DATASET_MEAN,
                     std=open_clip.OPENAI_DATASET_STD)
    for data in photos():
        want = pre(decode(data, draft_size=size))
        d = levels(fast(data, spec, size), want, spec)
        assert d.max() <= 2.01 and d.mean() < 0.05  # torch's uint8 kernel vs Pillow's: a level or two, rarely


def test_prepared_inputs_match_the_processor(tiny_models):
    """prepare_pixels gives the model what prepare gives it: same prompt tokens, same pixels."""
    from recaption.captioners import build_captioner, load_preset

    for model, prompt in [("blip", "a picture of"), ("blip2", None), ("blip2t5", None), ("blip2", "Question:")]:
        cap = build_captioner(load_preset(tiny_models[model], device="cpu", dtype="float32", prompt=prompt))
        spec = cap.pixel_spec()
        ims = [decode(d, draft_size=64) for d in photos()[:3]]
        want = cap.prepare(ims)
        pool = DecodePool({"caption": spec}, batch_size=4)
        try:
            got = cap.prepare_pixels(pool.decode(photos()[:3]).pixels["caption"])
        finally:
            pool.close()
        assert set(got) == set(want)
        for k in want:
            if k != "pixel_values":
                assert torch.equal(got[k], want[k]), (model, k)
        assert levels(normalize(got["pixel_values"], spec), want["pixel_values"], spec).max() < 0.01
        # per-sample pixels (isolation and OOM retries) take the same road
        again = cap.prepare(list(got["pixel_values"]))
        assert torch.equal(again["pixel_values"], got["pixel_values"])


def test_fast_clip_scores_stay_within_1e_2_of_the_exact_path(clip):
    datas = photos()
    texts = ["a cat", "a rocket launch", "a cup of coffee", "stars in the sky", "a woman in a suit"]
    exact = clip.encode_images([decode(d, draft_size=clip.image_size) for d in datas])
    pool = DecodePool({"clip": clip.pixel_spec()}, batch_size=8)
    try:
        fast_emb = clip.encode_pixels(clip.prepare_pixels(pool.decode(datas).pixels["clip"]))
        per_sample = clip.encode_images(pool.decode(datas).images_for("clip"))  # the retry road
    finally:
        pool.close()
    t = clip.encode_texts(texts)
    d = (fast_emb @ t.T - exact @ t.T).abs()
    assert d.max() < 1e-2
    assert torch.allclose(per_sample, fast_emb, atol=1e-6)
    raw_fast, _ = clip.score(fast_emb, texts, [[]] * 5)
    raw_exact, _ = clip.score(exact, texts, [[]] * 5)
    assert raw_fast == pytest.approx(raw_exact, abs=1e-2)


@pytest.mark.parametrize("which", ["blip", "blip2t5", "coca"])
def test_fast_captioning_runs_on_prepared_pixels(tiny_models, which):
    """Fast-path pixels go through caption(), batched and per sample (no comparison of caption
    text: only the exact path's captions are pinned elsewhere)."""
    from recaption.captioners import build_captioner, load_preset

    cap = build_captioner(load_preset(tiny_models[which], device="cpu", dtype="float32", max_new_tokens=5))
    pool = DecodePool({"caption": cap.pixel_spec()}, batch_size=8)
    try:
        b = pool.decode(photos())
    finally:
        pool.close()
    out = cap.caption(b.images_for("caption"), [None] * 5, "k", cap.prepare_pixels(b.pixels["caption"]))
    assert len(out) == 5 and all(len(c) == 1 and isinstance(c[0], str) for c in out)
    one = cap.caption(b.images_for("caption")[:1], [None], "k")  # the isolation road: per-sample pixels
    assert len(one) == 1 and len(one[0]) == 1


def test_normalize_runs_in_float32_then_casts():
    spec = PixelSpec("squash", (2, 2), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.tensor([0, 255], dtype=torch.uint8).repeat(6)[:12].view(1, 3, 2, 2)
    y = normalize(x, spec, torch.bfloat16)
    assert y.dtype == torch.bfloat16
    assert y.float().flatten()[:2].tolist() == pytest.approx([-2.0, 2.0])


def test_images_of_one_size_resize_as_one_batch():
    from recaption.io.pixels import stack

    spec = PixelSpec("shortest", (32,), crop=(32, 32))
    ims = [torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8) for _ in range(3)]
    ims.insert(1, torch.randint(0, 255, (3, 80, 40), dtype=torch.uint8))
    from recaption.io.pixels import resize_crop

    out = stack(ims, spec)
    assert out.shape == (4, 3, 32, 32)
    for i, im in enumerate(ims):
        assert torch.equal(out[i], resize_crop(im, spec))
    Image.new("RGB", (1, 1))  # PIL stays importable beside torchvision in one process
