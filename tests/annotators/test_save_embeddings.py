"""Issue 25.2: `--save-embeddings` keeps each shard's CLIP image embeddings beside its annotation file
(clip-retrieval's img_emb/ + metadata/ layout, rows aligned), resumes a shard whose files went
missing, and removes them where a later pass replaces the CLIP results without them."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from recaption.io import embeddings
from tests.helpers import cli, dead_pid, photo_shards


@pytest.fixture
def setup(tmp_path, tiny_models):
    shards = photo_shards(tmp_path / "in")
    ann = tmp_path / "ann"
    args = ("score", shards, "-a", ann, "--clip-model", tiny_models["clip"], "--no-sieve", "-q")
    assert cli(*args, "--save-embeddings") == 0
    return shards, ann, args


def test_rows_aligned_with_the_annotation_file_and_the_scores(setup, tiny_models):
    from recaption.scoring.clip import ClipConfig, ClipScorer

    _, ann, _ = setup
    scorer = ClipScorer(ClipConfig(model=tiny_models["clip"]))
    checked = 0
    for name in ("00000", "00001"):
        rows = pq.read_table(ann / f"{name}.parquet").to_pylist()
        vectors, meta = embeddings.read(str(ann), name)
        assert vectors.dtype == np.float16 and len(vectors) == len(rows)
        assert meta["key"].to_pylist() == [r["key"] for r in rows]
        assert meta["image_path"].to_pylist() == [f"{name}/{r['key']}" for r in rows]
        ok = np.array([r["status"] == "ok" for r in rows])
        assert meta["embedded"].to_pylist() == ok.tolist()
        assert not vectors[~ok].any()  # error rows: zeros, embedded false
        v = vectors[ok].astype(np.float32)
        assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=2e-3)
        # the kept vectors are the ones the CLIP scores were computed from
        text = scorer.encode_texts([r["raw_caption"] for r, k in zip(rows, ok) if k]).float().numpy()
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        cos = np.sum(v * text, axis=1)
        assert np.allclose(cos, [r["clip_raw"] for r, k in zip(rows, ok) if k], atol=5e-3)
        checked += int(ok.sum())
    assert checked == 30
    s = embeddings.settings(str(ann), "00001")
    assert s["settings"]["model"] == tiny_models["clip"] and s["rows"] == 25 and s["dtype"] == "float16"
    groups = json.loads((ann / "_recaption.json").read_text())["groups"]
    assert groups["clip"]["embeddings"] == "float16"


def test_a_missing_embedding_file_is_made_again_and_stale_temporaries_go(setup, capsys):
    _, ann, args = setup
    before = (ann / "embeddings/img_emb/img_emb_00000.npy").read_bytes()
    (ann / "embeddings/img_emb/img_emb_00000.npy").unlink()
    stale = ann / f"embeddings/metadata/.metadata_00001.parquet.recaption-{dead_pid()}-abcd1234.tmp"
    stale.write_bytes(b"left by a killed run")
    mtime = (ann / "00001.parquet").stat().st_mtime_ns
    capsys.readouterr()
    assert cli(*args, "--save-embeddings", "--json") == 0
    s = json.loads(capsys.readouterr().out)
    assert s["shards"] == {"done": 1, "skipped": 1, "failed": 0}
    assert (ann / "embeddings/img_emb/img_emb_00000.npy").read_bytes() == before
    assert (ann / "00001.parquet").stat().st_mtime_ns == mtime and not stale.exists()


def test_other_settings_are_refused_and_overwrite_removes_the_files(setup, capsys):
    _, ann, args = setup
    assert cli(*args) == 2  # the folder keeps embeddings: a pass without them has other settings
    assert "clip written with other settings" in capsys.readouterr().err
    assert cli(*args, "--overwrite") == 0
    assert not embeddings.has(str(ann), "00000") and not embeddings.has(str(ann), "00001")
    assert "embeddings" not in json.loads((ann / "_recaption.json").read_text())["groups"]["clip"]
