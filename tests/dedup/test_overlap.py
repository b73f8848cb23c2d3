"""Evaluation-set overlap: an EVAL folder of images and a shard, fingerprinted with the pool's own
functions, against pool rows made from the bundled photographs."""
from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from recaption.errors import RecaptionError
from recaption.dedup import duplicates as D
from recaption.dedup import overlap as O
from tests.dedup.test_dedup import PHOTOS, near_copies, table_of


def shard(path: Path, samples: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, data in samples.items():
            for field, payload in (("jpg", data), ("txt", b"caption")):
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """bench/: astronaut.jpg, sub/chelsea.jpg, a broken file, and a shard holding coffee."""
    d = tmp_path_factory.mktemp("e") / "bench"
    (d / "sub").mkdir(parents=True)
    shutil.copy(PHOTOS[0], d / "astronaut.jpg")
    shutil.copy(PHOTOS[1], d / "sub" / "chelsea.jpg")
    (d / "broken.png").write_bytes(b"not an image")
    shard(d / "00000.tar", {"c1": PHOTOS[2].read_bytes()})
    return d


def test_the_eval_set_is_every_image_and_shard_sample_in_order(eval_dir):
    ev = O.load_eval(str(eval_dir))
    assert ev.name == "bench"
    assert ev.names == ["astronaut.jpg", "broken.png", "sub/chelsea.jpg", "00000/c1"]
    assert ev.has_phash.tolist() == [True, False, True, True]
    assert ev.errors == [{"name": "broken.png", "error": "decode: bytes are not a recognised image format"}]


def test_pool_copies_of_eval_images_overlap_and_others_do_not(eval_dir):
    ev = O.load_eval(str(eval_dir))
    astro = near_copies(PHOTOS[0])
    pool = {"copy": astro["copy"], "q60": astro["q60"], "half": astro["half"], "mirror": astro["mirror"],
            "crop5": astro["crop5"], "chelsea": PHOTOS[1].read_bytes(), "coffee-copy": near_copies(PHOTOS[2])["q60"],
            "hubble": PHOTOS[3].read_bytes(), "rocket": PHOTOS[4].read_bytes()}
    t = table_of(list(pool.values()))
    cfg = O.OverlapConfig()
    ov = O.overlaps(D.file_keys(t, cfg), ev, cfg)
    names = list(pool)
    got = {names[r]: (D.RULE_NAMES[int(c)], ev.names[int(i)], float(v))
           for r, c, i, v in zip(ov.rows, ov.code, ov.partner_row, ov.value)}
    assert got["copy"] == ("sha256", "astronaut.jpg", 0.0)
    assert got["chelsea"] == ("sha256", "sub/chelsea.jpg", 0.0)
    assert got["q60"][:2] == got["half"][:2] == ("phash", "astronaut.jpg")
    assert got["mirror"][:2] == ("phash mirrored", "astronaut.jpg")
    assert got["crop5"][:2] == ("phash", "astronaut.jpg") and got["crop5"][2] <= O.OVERLAP_PHASH_K  # 8 bits
    assert got["coffee-copy"][:2] == ("phash", "00000/c1")
    assert "hubble" not in got and "rocket" not in got
    text = O.reasons(ov, ev).to_pylist()
    assert text[0] == "overlaps bench/astronaut.jpg (sha256, identical)"
    assert "overlaps bench/00000/c1 (phash, 0)" in text
    assert O.counts([ov], cfg) == {"sha256": 2, "phash": 4, "phash mirrored": 1}


def test_the_embedding_rule_against_eval_embeddings():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    e = rng.normal(size=(20, 32)).astype(np.float32)
    pool = rng.normal(size=(50, 32)).astype(np.float32)
    pool[7] = e[3] + rng.normal(scale=0.01, size=32)
    pool[9] = 0  # not embedded
    ev = O.EvalSet("ev", [f"i{j}" for j in range(20)], *(np.zeros(20, np.uint64) for _ in range(4)),
                   np.zeros(20, bool), embeddings=e)
    keys = D.FileKeys(np.arange(50, dtype=np.int32))
    ov = O.overlaps(keys, ev, O.OverlapConfig(exact=False, phash_k=None, cosine=0.9), embeddings=pool)
    assert ov.rows.tolist() == [7] and ov.partner_row.tolist() == [3] and ov.value[0] > 0.99
    assert O.reasons(ov, ev).to_pylist()[0].startswith("overlaps ev/i3 (embedding, 0.99")


def test_an_eval_folder_without_images_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecaptionError, match="no images"):
        O.load_eval(str(tmp_path / "empty"))


def test_one_shard_as_eval(eval_dir):
    ev = O.load_eval(str(eval_dir / "00000.tar"))
    assert ev.name == "00000" and ev.names == ["00000/c1"]


def test_overlap_columns_are_the_fingerprints():
    assert O.OverlapConfig().columns() == [D.SHA_COLUMN, D.PHASH_COLUMN, D.MIRROR_COLUMN]


def test_eval_images_are_hashed_as_imagehash_hashes_them(tmp_path):
    """docs/formats.md: EVAL images are PIL images, hashed exactly as imagehash does (the value a
    reason reports is then the one its rule compared)."""
    import imagehash
    from PIL import Image

    folder = tmp_path / "eval"
    folder.mkdir()
    for p in PHOTOS:
        im = Image.open(p)
        im.save(folder / f"{p.stem}.jpg", quality=70)  # a re-encode: the fast path's hash can move by bits
    ev = O.load_eval(str(folder))
    want = [int(str(imagehash.phash(Image.open(folder / n))), 16) for n in ev.names]
    assert ev.phash.tolist() == want
    mirrored = [int(str(imagehash.phash(Image.open(folder / n).transpose(Image.Transpose.FLIP_LEFT_RIGHT))), 16)
                for n in ev.names]
    assert ev.mirror.tolist() == mirrored
