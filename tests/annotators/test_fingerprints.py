"""Issue 25.1: every annotating pass fingerprints each image (sha256 of its bytes, pHash and mirrored
pHash of its pixels), on real photographs and their near-copies, with no model."""
from __future__ import annotations

import hashlib
import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from recaption.io.shards import iter_shard
from tests.helpers import COPIES, PHOTOS, cli, photo_shards

imagehash = pytest.importorskip("imagehash")


def bits(a: int, b: int) -> int:
    return bin(int(a) ^ int(b)).count("1")


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    root = tmp_path_factory.mktemp("fingerprints")
    shards = photo_shards(root / "in")
    assert cli("score", shards, "-a", root / "ann", "--no-clip", "--no-sieve", "-q") == 0  # no model at all
    rows = {}
    for t in sorted((root / "ann").glob("*.parquet")):
        rows |= {r["key"]: r for r in pq.read_table(t).to_pylist()}
    return shards, root, rows


def test_columns_and_their_nulls(annotated):
    shards, root, rows = annotated
    images = {s.key: s.image_bytes for t in sorted(shards.glob("*.tar")) for s in iter_shard(str(t))
              if getattr(s, "image_field", None)}
    assert len(images) == 31 and len(rows) == 32
    for key, data in images.items():
        assert rows[key]["image_sha256"] == hashlib.sha256(data).digest(), key
    assert rows["noimage"]["image_sha256"] is None and rows["noimage"]["phash"] is None  # no image member
    assert rows["broken"]["image_sha256"] is not None and rows["broken"]["phash"] is None  # did not decode
    assert rows["broken"]["phash_mirror"] is None and rows["broken"]["status"] == "error"
    schema = pq.read_schema(root / "ann" / "00000.parquet")
    assert str(schema.field("image_sha256").type) == "fixed_size_binary[32]"
    assert str(schema.field("phash").type) == "uint64" == str(schema.field("phash_mirror").type)
    groups = json.loads((root / "ann" / "_recaption.json").read_text())["groups"]
    assert "fingerprints" in groups and "preprocess" not in groups["fingerprints"]


def test_phash_is_imagehashs_within_two_bits(annotated):
    _, _, rows = annotated
    checked = 0
    for p in PHOTOS:
        im = Image.open(p)
        ref = int(str(imagehash.phash(im)), 16)
        mirrored = int(str(imagehash.phash(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))), 16)
        r = rows[f"orig-{p.stem}"]
        assert bits(r["phash"], ref) <= 2 and bits(r["phash_mirror"], mirrored) <= 2, p.stem
        checked += 1
    assert checked == 5


def test_copies_are_near_and_other_photographs_far(annotated):
    """The distances docs/formats.md#thresholds gives, through the annotate path."""
    _, _, rows = annotated
    crop = {}
    for p in PHOTOS:
        o = rows[f"orig-{p.stem}"]
        for kind in COPIES:
            r = rows[f"{p.stem}-{kind}"]
            plain, mirrored = bits(r["phash"], o["phash"]), bits(r["phash"], o["phash_mirror"])
            if kind == "mirror":
                assert mirrored <= 2 and plain >= 20, (p.stem, mirrored, plain)
            elif kind == "crop5":
                crop[p.stem] = plain
            else:
                assert plain <= 2, (p.stem, kind, plain)
            assert (r["image_sha256"] == o["image_sha256"]) == (kind == "bytes")
        for q in PHOTOS:
            if q != p:
                other = rows[f"orig-{q.stem}"]
                assert min(bits(o["phash"], other["phash"]), bits(o["phash"], other["phash_mirror"])) >= 20
    assert crop == {"astronaut": 8, "chelsea": 4, "coffee": 10, "hubble": 4, "rocket": 12}


def test_the_exact_path_hashes_as_imagehash_and_says_so(annotated, tmp_path):
    shards, _, fast = annotated
    assert cli("score", shards / "00000.tar", "-a", tmp_path / "ann", "--no-clip", "--no-sieve",
               "--preprocess", "exact", "-q") == 0
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "ann" / "00000.parquet").to_pylist()}
    groups = json.loads((tmp_path / "ann" / "_recaption.json").read_text())["groups"]
    assert groups["fingerprints"]["preprocess"] == "exact"
    for p in PHOTOS:  # a draft decode of 128 px or more, then imagehash's own Lanczos grey hash
        im = Image.open(io.BytesIO(p.read_bytes()))
        assert bits(rows[f"orig-{p.stem}"]["phash"], int(str(imagehash.phash(im)), 16)) <= 2
        assert rows[f"orig-{p.stem}"]["image_sha256"] == fast[f"orig-{p.stem}"]["image_sha256"]
