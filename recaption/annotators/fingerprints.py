"""The `fingerprints` group: sha256 of each image's bytes and its 64-bit perceptual hash, plain and
mirrored (docs/formats.md#fingerprint-columns), what the duplicate and evaluation-overlap rules of
a mix read. No model: the hash is cut from the decode every image model of the pass shares (a
32x32 input, `recaption.scoring.fingerprint.FINGERPRINT_SPEC`), so every pass computes it."""
from __future__ import annotations

from recaption.annotators.base import Annotator, Column, prepared
from recaption.scoring.fingerprint import FINGERPRINT_SPEC, HASH_SIZE, SIDE


class _HashInput:
    """The image model the decoder feeds: FINGERPRINT_SPEC's 32x32 uint8 pixels on the fast path;
    on the exact path, the hashes themselves from PIL images (imagehash's own computation)."""

    image_size = FINGERPRINT_SPEC.draft_size  # the smallest decode it reads (JPEG draft mode)

    def pixel_spec(self):
        """The fast path's input: 32x32 RGB, antialiased bicubic, left as uint8."""
        return FINGERPRINT_SPEC

    def prepare(self, images):
        """PIL images (exact path) or per-sample uint8 [3, 32, 32] pixels -> (phash, phash_mirror)."""
        import numpy as np

        from recaption.scoring.fingerprint import phash_images, phash_pixels

        if images and hasattr(images[0], "convert"):
            return phash_images(images)
        return phash_pixels(np.stack([np.asarray(x) for x in images]) if images else
                            np.zeros((0, 3, SIDE, SIDE), np.uint8))


class Fingerprints(Annotator):
    """`image_sha256`, `phash`, `phash_mirror`: one sha256 a stored image, one DCT per decoded image."""

    name = "fingerprints"
    always = True
    columns = (
        Column("image_sha256", "binary[32]"),  # null: no image member
        Column("phash", "uint64"),  # null: the image did not decode
        Column("phash_mirror", "uint64"),
    )
    add_hint = "recaption score INPUT -a ANN (with --no-clip --no-sieve: metrics and fingerprints only)"

    @classmethod
    def settings(cls, config, run) -> dict:
        """The hash (imagehash's pHash, 8x8 of a 32x32 DCT) and the input path where it is not the fast one."""
        s = {"sha256": "image bytes", "phash": f"dct {SIDE}x{SIDE} -> {HASH_SIZE}x{HASH_SIZE}, with mirror"}
        return s | ({"preprocess": run.preprocess} if run.preprocess != "fast" else {})

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.input = _HashInput()

    def image_models(self) -> dict:
        """The 32x32 hash input is read from the shared decode."""
        return {"phash": self.input}

    def annotate_batch(self, batch) -> None:
        """sha256 of every row's image bytes (undecodable ones too); the pHashes of the decoded rows."""
        from recaption.scoring.fingerprint import phash_pixels, sha256s

        digests, present = sha256s(rec.image_bytes if rec.image_field else None for rec in batch.records)
        for r, d, ok in zip(batch.rows, digests, present):
            r["image_sha256"] = d.tobytes() if ok else None
        idx = batch.live()
        if not idx:
            return
        x = prepared(batch, self.input, idx)
        p, m = x if isinstance(x, tuple) else phash_pixels(x)
        for i, a, b in zip(idx, p.tolist(), m.tolist()):
            batch.rows[i]["phash"], batch.rows[i]["phash_mirror"] = a, b
