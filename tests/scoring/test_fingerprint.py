"""Fingerprints: sha256 of the bytes and pHash, against the imagehash library on real photographs
and their near-copies (made here from tests/data/photos)."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recaption.scoring import fingerprint as fp

imagehash = pytest.importorskip("imagehash")

PHOTOS = sorted((Path(__file__).parents[1] / "data" / "photos").glob("*.jpg"))


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", quality=quality)
    return b.getvalue()


def copies(im: Image.Image) -> dict[str, Image.Image]:
    """The near-copies the duplicate tests use: re-encoded at quality 60, half size, 5% cropped
    (the centre 95% of width and height), mirrored."""
    w, h = im.size
    cw, ch = round(w * 0.95), round(h * 0.95)
    left, top = (w - cw) // 2, (h - ch) // 2
    return {"q60": Image.open(io.BytesIO(jpeg(im, 60))).convert("RGB"),
            "half": im.resize((w // 2, h // 2), Image.Resampling.BICUBIC),
            "crop5": im.crop((left, top, left + cw, top + ch)),
            "mirror": im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)}


def reference(im: Image.Image) -> int:
    return int(str(imagehash.phash(im)), 16)


def bits(a: int, b: int) -> int:
    return bin(int(a) ^ int(b)).count("1")


def test_the_bundled_photographs_are_there():
    assert len(PHOTOS) == 5


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.stem)
def test_phash_of_pil_images_is_imagehash_bit_for_bit(path):
    im = Image.open(path).convert("RGB")
    images = [im, *copies(im).values()]
    p, _ = fp.phash_images(images)
    assert [int(v) for v in p] == [reference(x) for x in images]
    assert fp.to_hex(p[:1]) == [str(imagehash.phash(im))]


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.stem)
def test_the_mirror_hash_is_the_hash_of_the_mirrored_image(path):
    im = Image.open(path).convert("RGB")
    _, m = fp.phash_images([im])
    assert bits(m[0], reference(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))) == 0
    assert bits(m[0], reference(im)) >= 20  # and not the image's own hash


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.stem)
def test_the_fast_path_hash_is_within_two_bits_of_imagehash(path):
    """From encoded bytes through the decode path (JPEG draft mode included) to the hash."""
    im = Image.open(path).convert("RGB")
    images = {"original": im, **copies(im)}
    datas = [jpeg(x, 95) for x in images.values()]
    sha, p, m, ok, errors = fp.fingerprint_bytes(datas)
    assert ok.all() and not errors
    far = {name: bits(h, reference(Image.open(io.BytesIO(d)))) for name, h, d in zip(images, p, datas)}
    assert max(far.values()) <= 2, far


def test_phash_pixels_takes_the_decode_pools_batches():
    from recaption.io.decode import DecodePool
    from recaption.io.pixels import PixelSpec

    datas = [p.read_bytes() for p in PHOTOS]
    clip = PixelSpec("shortest", (224,), crop=(224, 224))
    with DecodePool({"fingerprint": fp.FINGERPRINT_SPEC, "clip": clip}, batch_size=8) as pool:
        batch = pool.decode(datas)
    px = batch.pixels["fingerprint"]
    assert tuple(px.shape) == (5, 3, 32, 32)
    p, m = fp.phash_pixels(px)
    alone, m_alone = fp.phash_pixels(np.stack([fp_pixels(d) for d in datas]))
    # CLIP's larger draft decode changes the pixels a little, the hashes by two bits at most
    assert max(bits(a, b) for a, b in zip(np.r_[p, m], np.r_[alone, m_alone])) <= 2
    assert max(bits(h, reference(Image.open(io.BytesIO(d)))) for h, d in zip(p, datas)) <= 2


def fp_pixels(data: bytes) -> np.ndarray:
    from recaption.io.decode import decode_pixels

    out, _, _ = decode_pixels(data, {"f": fp.FINGERPRINT_SPEC}, draft_size=fp.FINGERPRINT_SPEC.draft_size)
    return out["f"].numpy()


def test_the_spec_asks_for_a_decode_of_128_pixels_or_more():
    assert fp.FINGERPRINT_SPEC.size == (32, 32)
    assert fp.FINGERPRINT_SPEC.draft_size == 128  # below CLIP's 224: sharing a decode changes no model input


def test_sha256_of_the_bytes_and_no_digest_without_an_image():
    datas = [PHOTOS[0].read_bytes(), None, b""]
    sha, present = fp.sha256s(datas)
    assert bytes(sha[0]) == hashlib.sha256(datas[0]).digest()
    assert present.tolist() == [True, False, False] and not sha[1:].any()


def test_an_undecodable_image_keeps_its_sha256_and_gets_no_phash():
    sha, p, m, ok, errors = fp.fingerprint_bytes([b"not an image", PHOTOS[1].read_bytes()])
    assert ok.tolist() == [False, True] and 0 in errors and "not a recognised image" in errors[0]
    assert bytes(sha[0]) == hashlib.sha256(b"not an image").digest()
    assert p[0] == 0 and m[0] == 0


def test_popcount_and_hamming():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2 ** 63, 500, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2 ** 63, 500, dtype=np.uint64)
    assert fp.hamming(a, b).tolist() == [bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b)]


def test_phash_pixels_refuses_other_shapes():
    with pytest.raises(ValueError, match="32, 32"):
        fp.phash_pixels(np.zeros((2, 3, 64, 64), dtype=np.uint8))
