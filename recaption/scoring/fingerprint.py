"""Image fingerprints, no model: sha256 of the stored bytes and a 64-bit perceptual hash (pHash).

The pHash is the `imagehash` library's `phash` (Zauner's DCT hash, as hackerfactor describes
it): the image in grey at 32x32, a 2-D DCT-II, its lowest 8x8 frequencies, each bit set where a
coefficient is above their median. Bits are read row by row, the first one most significant, so
`format(h, "016x")` is `str(imagehash.phash(image))`. From PIL images it equals imagehash bit for
bit (Lanczos resize of the grey image, as imagehash does); on the fast decode path the 32x32
input comes from `FINGERPRINT_SPEC` (antialiased bicubic of the RGB image, then grey), which is
within 2 bits of it on the bundled photographs and their copies (tests/scoring/test_fingerprint.py)
and within 4 on the benchmark's JPEGs. The JPEG draft scale of the shared decode (set by the
largest input any model of the pass needs) can move it by a bit or two as well.

Mirrored copies: the DCT of a left-right mirrored image is the same block with its odd
horizontal frequencies negated, so `phash_mirror` (the hash of the mirrored image) comes from
the same DCT at no extra resize. The duplicate rules compare either hash of one sample with either
hash of the other (docs/formats.md#duplicates-and-evaluation-overlap).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from recaption.io.pixels import PixelSpec

if TYPE_CHECKING:
    import numpy as np

HASH_SIZE = 8  # imagehash's hash_size: 8x8 = 64 bits
HIGHFREQ_FACTOR = 4  # imagehash's highfreq_factor: the DCT input is 32x32
SIDE = HASH_SIZE * HIGHFREQ_FACTOR
MIN_DRAFT = 128  # smallest JPEG draft decode the hash reads (see FingerprintSpec)


@dataclass(frozen=True)
class FingerprintSpec(PixelSpec):
    """The pHash input on the fast path: 32x32 RGB, antialiased bicubic, no normalisation.

    A 32x32 target alone would let JPEG draft mode decode at 1/8 scale down to 32 px, which moves
    the hash of small images by up to 8 bits; so the decode it asks for is at least MIN_DRAFT
    pixels (below CLIP's 224, so adding the fingerprint never changes the other models' input).
    """

    min_draft: int = MIN_DRAFT

    @property
    def draft_size(self) -> int:
        """The smallest side a decoded image needs: at least `min_draft`."""
        return max(max(self.resize_size), self.min_draft)


FINGERPRINT_SPEC = FingerprintSpec("squash", (SIDE, SIDE), interpolation="bicubic", antialias=True)


def sha256s(datas: Iterable[bytes | None]) -> tuple["np.ndarray", "np.ndarray"]:
    """Image bytes -> (uint8 [N, 32] digests, bool [N] present); a missing image has no digest
    (zeros, present False)."""
    import numpy as np

    datas = list(datas)
    out = np.zeros((len(datas), 32), dtype=np.uint8)
    present = np.zeros(len(datas), dtype=bool)
    for i, d in enumerate(datas):
        if d:
            out[i] = np.frombuffer(hashlib.sha256(d).digest(), dtype=np.uint8)
            present[i] = True
    return out, present


def phash_pixels(pixels) -> tuple["np.ndarray", "np.ndarray"]:
    """uint8 [N, 3, 32, 32] (torch or numpy, any memory layout; FINGERPRINT_SPEC's batches) ->
    (phash, phash_mirror) as uint64 [N].

    Grey is Pillow's own integer conversion (ITU-R 601-2 luma, rounded), as imagehash gets it."""
    import numpy as np

    x = pixels.detach().cpu().numpy() if hasattr(pixels, "detach") else np.asarray(pixels)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (SIDE, SIDE):
        raise ValueError(f"phash_pixels wants uint8 [N, 3, {SIDE}, {SIDE}], got {tuple(x.shape)}")
    x = x.astype(np.int32)
    grey = (x[:, 0] * 19595 + x[:, 1] * 38470 + x[:, 2] * 7471 + 0x8000) >> 16
    return phash_grey(grey)


def phash_grey(grey) -> tuple["np.ndarray", "np.ndarray"]:
    """Grey [N, 32, 32] (any real dtype) -> (phash, phash_mirror) as uint64 [N]."""
    import numpy as np

    g = np.asarray(grey, dtype=np.float64)
    c = _dct_rows()
    low = c @ g @ c.T  # [N, 8, 8]: DCT-II down the columns, then along the rows, lowest 8x8
    mirrored = low.copy()
    mirrored[:, :, 1::2] *= -1  # x -> 31 - x negates the odd horizontal frequencies
    return _bits(low), _bits(mirrored)


def phash_images(images: Iterable) -> tuple["np.ndarray", "np.ndarray"]:
    """PIL images -> (phash, phash_mirror) as uint64 [N]; phash equals `imagehash.phash`."""
    import numpy as np
    from PIL import Image

    images = list(images)
    grey = np.empty((len(images), SIDE, SIDE), dtype=np.float64)
    for i, im in enumerate(images):
        grey[i] = np.asarray(im.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS), dtype=np.float64)
    return phash_grey(grey)


def fingerprint_bytes(datas: list[bytes | None], *, max_pixels: int | None = None, exact: bool = False):
    """Image bytes -> (sha256 uint8 [N, 32], phash, phash_mirror uint64 [N], ok bool [N], errors
    {index: reason}): for images outside a shard, such as an evaluation set. `exact` hashes each
    decoded image as imagehash does (`phash_images`: full decode, grey, Lanczos); otherwise as the
    fast path does (`FINGERPRINT_SPEC`)."""
    import numpy as np

    from recaption.io.decode import decode_pixels
    from recaption.io.images import DEFAULT_MAX_PIXELS, ImageError, decode

    sha, present = sha256s(datas)
    px = np.zeros((len(datas), 3, SIDE, SIDE), dtype=np.uint8)
    ok = np.zeros(len(datas), dtype=bool)
    images, errors = {}, {}
    for i, d in enumerate(datas):
        try:
            if exact:
                images[i] = decode(d, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
            else:
                out, _, _ = decode_pixels(d, {"fingerprint": FINGERPRINT_SPEC}, draft_size=FINGERPRINT_SPEC.draft_size,
                                          max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
                px[i] = out["fingerprint"].numpy()
        except ImageError as e:
            errors[i] = str(e)
            continue
        ok[i] = True
    if exact:
        p, m = np.zeros(len(datas), np.uint64), np.zeros(len(datas), np.uint64)
        if images:
            at = np.array(sorted(images), dtype=np.int64)
            p[at], m[at] = phash_images(images[i] for i in at.tolist())
    else:
        p, m = phash_pixels(px)
    p[~ok] = m[~ok] = 0
    return sha, p, m, ok & present, errors


def hamming(a, b) -> "np.ndarray":
    """Bits that differ between uint64 hashes, elementwise (broadcasting), as uint8."""
    import numpy as np

    return popcount(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def popcount(x) -> "np.ndarray":
    """Set bits of each uint64, as uint8 (numpy 2's bitwise_count; a SWAR count on numpy 1)."""
    import numpy as np

    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.uint8)


def to_hex(h) -> list[str]:
    """uint64 hashes -> imagehash's 16-digit hex strings."""
    return [format(int(v), "016x") for v in h]


def _bits(block) -> "np.ndarray":
    import numpy as np

    flat = block.reshape(len(block), -1)
    above = flat > np.median(flat, axis=1, keepdims=True)  # imagehash: strictly above the median
    return np.packbits(above, axis=1).view(">u8").ravel().astype(np.uint64)


_DCT = None


def _dct_rows():
    """The first 8 rows of the (unscaled) 32-point DCT-II matrix. scipy's unnormalised DCT differs
    by a positive factor per axis, which moves no coefficient across the median."""
    global _DCT
    if _DCT is None:
        import numpy as np

        n = np.arange(SIDE)
        _DCT = np.cos(np.pi * (2 * n[None, :] + 1) * np.arange(HASH_SIZE)[:, None] / (2 * SIDE))
    return _DCT
