"""Issue 25.3-5: duplicates and evaluation-set overlap in the pool pass, end to end through the CLI on
real near-copies of the bundled photographs (tests/helpers.py: `photo_shards`): annotate, then mix
with --dedup and --decontaminate at the thresholds docs/formats.md#thresholds gives; every input
sample ends in exactly one place."""
from __future__ import annotations

import io
import json
import re
import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image

from recaption.demo.samples import write_tar
from tests.helpers import COPIES, PHOTOS, accounted, cli, photo_shards, summary

STEMS = [p.stem for p in PHOTOS]
NEAR = ("q60", "half")  # within 2 bits of their photograph through the annotate path; mirror: of its mirror
CROP_BITS = {"astronaut": 8, "chelsea": 4, "coffee": 10, "hubble": 4, "rocket": 12}  # the 5% crops (docs)


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_models):
    """The photographs and their copies, annotated once with the tiny CLIP, embeddings kept."""
    root = tmp_path_factory.mktemp("dedup-pool")
    shards = photo_shards(root / "in")
    assert cli("score", shards, "-a", root / "ann", "--clip-model", tiny_models["clip"], "--no-sieve",
               "--save-embeddings", "-q") == 0
    return shards, root / "ann"


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """A benchmark's test images: astronaut re-encoded as PNG, chelsea byte for byte, coffee as PNG,
    a file that is no image, and a shard holding hubble; rocket is not in it."""
    d = tmp_path_factory.mktemp("bench") / "bench"
    (d / "val").mkdir(parents=True)
    photo = {p.stem: p for p in PHOTOS}
    for stem in ("astronaut", "coffee"):
        Image.open(photo[stem]).save(d / "val" / f"{stem}.png")
    (d / "val" / "chelsea.jpg").write_bytes(photo["chelsea"].read_bytes())
    (d / "notes.jpg").write_bytes(b"not an image")
    write_tar(d / "more.tar", [("h1", {"jpg": photo["hubble"].read_bytes(), "txt": b"hubble"})])
    return d


def _mix(shards, ann, out, *args):
    assert cli("mix", shards, "-a", ann, "-o", out, "--strategy", "raw", *args, "-q") == 0
    return accounted(out, shards)


def _partner(reason: str) -> str:
    return re.match(r"(?:duplicate of|overlaps) (\S+) \(", reason).group(1)


def test_exact_and_phash_find_the_copies_and_not_the_other_photographs(pool, tmp_path):
    shards, ann = pool
    written, drops = _mix(shards, ann, tmp_path / "out", "--dedup", "exact", "--dedup", "phash")
    want = {f"orig-{s}" for s in STEMS} | {f"{s}-crop5" for s in STEMS}  # crops are 4-12 bits away: not at k = 2
    assert written == want
    checked = 0
    for s in STEMS:
        assert drops[f"{s}-bytes"] == f"duplicate of 00000/orig-{s} (sha256, identical)"
        for kind in NEAR:
            assert re.fullmatch(rf"duplicate of 00000/orig-{s} \(phash, [012]\)", drops[f"{s}-{kind}"]), kind
        assert re.fullmatch(rf"duplicate of 00000/orig-{s} \(phash mirrored, [012]\)", drops[f"{s}-mirror"])
        checked += 1
    assert checked == 5
    assert drops["broken"].startswith("decode:") and drops["noimage"].startswith("read:")
    s = summary(tmp_path / "out")
    assert s["counts"]["dropped_by_reason"] == {"duplicate: sha256": 5, "duplicate: phash": 10,
                                                "duplicate: phash mirrored": 5,
                                                "decode: bytes are not a recognised image format": 1,
                                                "read: no image member (looked for jpg, jpeg, png, webp)": 1}
    assert s["dedup"] == [{"rule": "exact", "dropped": 5, "compared": 30},
                          {"rule": "phash=2", "dropped": 15, "mirrored": 5, "compared": 25}]
    meta = json.loads(pq.read_schema(tmp_path / "out/_decisions/00001.parquet").metadata[b"recaption.decisions"])
    assert meta["dedup"] == {"exact": None, "phash": 2} and meta["dedup_keep"] == "first"


def test_the_dry_run_shows_each_rules_drops(pool, tmp_path, capsys, monkeypatch):
    shards, ann = pool
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    assert cli("mix", shards, "-a", ann, "--strategy", "raw", "--dedup", "exact,phash", "--dry-run", "--json") == 0
    s = json.loads(capsys.readouterr().out)
    assert s["dedup"] == [{"rule": "exact", "dropped": 5, "compared": 30},
                          {"rule": "phash=2", "dropped": 15, "mirrored": 5, "compared": 25}]
    raw = next(r for r in s["strategies"] if r["strategy"] == "raw")
    assert s["counts"]["written"] == raw["kept"] == 10 and raw["dropped"] == 22
    assert cli("mix", shards, "-a", ann, "--strategy", "raw", "--dedup", "exact,phash", "--dry-run") == 0
    table = capsys.readouterr().out
    assert "duplicate rules, in order" in table and "drops 15 (5 mirrored) of 25 compared" in table


def test_a_fraction_is_taken_over_what_the_rules_left(pool, tmp_path):
    shards, ann = pool
    _mix(shards, ann, tmp_path / "out", "--dedup", "exact,phash", "--fraction", 0.5)
    s = summary(tmp_path / "out")
    scores = {r["key"]: r["clip_raw"] for t in sorted(ann.glob("*.parquet")) for r in pq.read_table(t).to_pylist()}
    left = sorted((scores[f"orig-{x}"] for x in STEMS), reverse=True) + [scores[f"{x}-crop5"] for x in STEMS]
    left = sorted(left, reverse=True)
    assert s["threshold"] == pytest.approx(left[int(len(left) * 0.5)], abs=1e-6)  # DataComp's rule on the 10 left


def test_best_keeps_the_highest_score_across_shards(pool, tmp_path):
    shards, ann = pool
    written, drops = _mix(shards, ann, tmp_path / "out", "--dedup", "exact", "--dedup-keep", "best:clip_raw")
    scores = {r["key"]: r["clip_raw"] for t in sorted(ann.glob("*.parquet")) for r in pq.read_table(t).to_pylist()}
    checked = 0
    for s in STEMS:
        a, b = f"orig-{s}", f"{s}-bytes"
        keep, drop = (a, b) if scores[a] >= scores[b] else (b, a)
        shard = "00000" if keep == a else "00001"
        assert keep in written and drops[drop] == f"duplicate of {shard}/{keep} (sha256, identical)"
        checked += 1
    assert checked == 5


def test_decontaminate_at_the_documented_thresholds(pool, eval_dir, tmp_path):
    shards, ann = pool
    written, drops = _mix(shards, ann, tmp_path / "out", "--decontaminate", eval_dir)
    overlapping = {"astronaut": "bench/val/astronaut.png", "chelsea": "bench/val/chelsea.jpg",
                   "coffee": "bench/val/coffee.png", "hubble": "bench/more/h1"}
    checked = 0
    for s, name in overlapping.items():
        for key in [f"orig-{s}"] + [f"{s}-{k}" for k in COPIES]:
            if key == f"{s}-crop5" and CROP_BITS[s] > 8:  # coffee's crop is 10 bits away: k = 8 misses it
                assert key in written
                continue
            assert _partner(drops[key]) == name, (key, drops[key])
            checked += 1
    assert checked == 23
    assert drops["orig-chelsea"] == "overlaps bench/val/chelsea.jpg (sha256, identical)"
    assert drops["chelsea-crop5"] == "overlaps bench/val/chelsea.jpg (phash, 4)"
    assert drops["astronaut-mirror"].startswith("overlaps bench/val/astronaut.png (phash mirrored, ")
    assert {"orig-rocket", *(f"rocket-{k}" for k in COPIES)} <= written  # a photograph not in EVAL
    s = summary(tmp_path / "out")
    ev = s["decontaminate"]
    assert (ev["images"], ev["unreadable"]) == (5, 1) and ev["errors"][0]["name"] == "notes.jpg"
    assert [r["rule"] for r in ev["rules"]] == ["exact", "phash=8"]

    # the larger k of the table finds the 5% crops it lists: coffee's at 10 bits
    written, drops = _mix(shards, ann, tmp_path / "out12", "--decontaminate", eval_dir,
                          "--decontaminate-rule", "exact", "--decontaminate-rule", "phash=12")
    assert drops["coffee-crop5"] == "overlaps bench/val/coffee.png (phash, 10)"
    assert "rocket-crop5" in written


def test_overlaps_first_then_duplicates_of_what_is_left(pool, eval_dir, tmp_path):
    shards, ann = pool
    written, drops = _mix(shards, ann, tmp_path / "out", "--decontaminate", eval_dir, "--dedup", "exact,phash")
    assert written == {"orig-rocket", "rocket-crop5", "coffee-crop5"}
    assert drops["rocket-bytes"] == "duplicate of 00000/orig-rocket (sha256, identical)"
    # coffee's crop escaped EVAL at k = 8; no duplicate names a sample that is not kept
    kept_partners = {_partner(r) for r in drops.values() if r.startswith("duplicate of")}
    assert kept_partners == {"00000/orig-rocket"}


def test_other_dedup_settings_refuse_to_resume(pool, eval_dir, tmp_path, capsys):
    shards, ann = pool
    out = tmp_path / "out"
    _mix(shards, ann, out, "--dedup", "exact")
    assert cli("mix", shards, "-a", ann, "-o", out, "--strategy", "raw", "--dedup", "exact", "-q") == 0  # resumes
    capsys.readouterr()
    for other in (["--dedup", "phash"], ["--dedup", "exact", "--dedup-keep", "best:clip_raw"],
                  ["--dedup", "exact", "--decontaminate", eval_dir], []):
        assert cli("mix", shards, "-a", ann, "-o", out, "--strategy", "raw", *other, "-q") == 2, other
        err = capsys.readouterr().err
        assert "different settings: mix.d" in err, err  # names what differs (the dedup or decontaminate keys)
    rec = json.loads((out / "_recaption.json").read_text())
    assert rec["identity"]["mix"]["dedup"] == {"exact": None}


def test_rules_are_checked_before_anything_is_written(pool, tmp_path, capsys):
    shards, ann = pool
    for bad, said in ((["--dedup", "phash=2.5"], "whole number of bits"), (["--dedup", "phash=x"], "number of bits"),
                      (["--dedup", "fuzzy"], "unknown --dedup rule"),
                      (["--dedup", "embedding"], "needs a cosine"), (["--dedup-keep", "best:clip_raw"], "give --dedup"),
                      (["--dedup", "exact", "--dedup-keep", "best:nothing"],
                       "unknown numeric annotation column 'nothing'"),
                      (["--decontaminate-rule", "exact"], "need --decontaminate EVAL"),
                      (["--decontaminate", tmp_path / "nowhere"], "--decontaminate")):
        capsys.readouterr()
        assert cli("mix", shards, "-a", ann, "-o", tmp_path / "out", "--strategy", "raw", *bad, "-q") == 2, bad
        assert said in capsys.readouterr().err, bad
    assert not (tmp_path / "out").exists()


def test_the_embedding_rules_plumbing_with_the_tiny_clip(pool, eval_dir, tmp_path, tiny_models):
    """Random weights: the mechanics only. A byte-identical copy has the same embedding, so the
    embedding rule alone finds it; EVAL is embedded with the model the pool's files record."""
    pytest.importorskip("faiss")
    shards, ann = pool
    written, drops = _mix(shards, ann, tmp_path / "out", "--dedup", "embedding=0.999")
    checked = 0
    for s in STEMS:
        m = re.fullmatch(rf"duplicate of 00000/orig-{s} \(embedding, (\S+)\)", drops[f"{s}-bytes"])
        assert m and float(m.group(1)) >= 0.999, drops[f"{s}-bytes"]
        checked += 1
    assert checked == 5 and {f"orig-{s}" for s in STEMS} <= written
    assert all(_partner(r).split("/")[1] != k for k, r in drops.items() if r.startswith("duplicate"))

    written, drops = _mix(shards, ann, tmp_path / "ev", "--decontaminate", eval_dir,
                          "--decontaminate-rule", "embedding=0.99")
    for key in ("orig-chelsea", "chelsea-bytes", "orig-hubble", "hubble-bytes"):  # the same bytes as in EVAL
        m = re.fullmatch(r"overlaps bench/(?:val/chelsea\.jpg|more/h1) \(embedding, (\S+)\)", drops[key])
        assert m and float(m.group(1)) >= 0.99, drops[key]
    ev = summary(tmp_path / "ev")["decontaminate"]
    assert ev["model"]["model"] == tiny_models["clip"]

    # the same model from elsewhere (a recorded name that does not load here): named, it is used
    copy = tmp_path / "clip-copy"
    shutil.copytree(tiny_models["clip"].split(":", 1)[1], copy)
    _, again = _mix(shards, ann, tmp_path / "ev2", "--decontaminate", eval_dir, "--decontaminate-rule",
                    "embedding=0.99", "--decontaminate-model", f"local-dir:{copy}")
    assert again == drops and summary(tmp_path / "ev2")["decontaminate"]["model"]["model"] == f"local-dir:{copy}"


def test_the_embedding_rule_needs_the_embedding_files(pool, tmp_path, tiny_models, capsys):
    shards, _ = pool
    ann = tmp_path / "ann"
    assert cli("score", shards / "00000.tar", "-a", ann, "--no-clip", "--no-sieve", "-q") == 0
    capsys.readouterr()
    assert cli("mix", shards / "00000.tar", "-a", ann, "--strategy", "raw", "--dedup", "embedding=0.9",
               "--dry-run") == 2
    assert "--save-embeddings" in capsys.readouterr().err


def test_older_annotation_files_without_fingerprints_say_how_to_add_them(pool, tmp_path, capsys):
    shards, ann = pool
    old = tmp_path / "old"
    old.mkdir()
    for p in ann.glob("*.parquet"):
        t = pq.read_table(p)
        meta = json.loads(t.schema.metadata[b"recaption"])
        meta["groups"].pop("fingerprints")
        t = t.drop_columns(["image_sha256", "phash", "phash_mirror"]).replace_schema_metadata(
            {b"recaption": json.dumps(meta).encode()})
        pq.write_table(t, old / p.name)
    capsys.readouterr()
    assert cli("mix", shards, "-a", old, "--strategy", "raw", "--dedup", "exact", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "fingerprints" in err and "recaption score INPUT -a ANN" in err


@pytest.mark.slow
def test_local_threads_and_ray_tasks_decide_the_same(pool, eval_dir, tmp_path, ray_local):
    pytest.importorskip("faiss")
    shards, ann = pool
    args = ["--dedup", "exact,phash,embedding=0.999", "--decontaminate", eval_dir, "--dedup-keep", "best:clip_raw"]
    _mix(shards, ann, tmp_path / "local", *args)
    _mix(shards, ann, tmp_path / "ray", *args, "--engine", "ray")
    checked = 0
    for name in ("00000", "00001"):
        a = pq.read_table(tmp_path / "local/_decisions" / f"{name}.parquet").to_pylist()
        b = pq.read_table(tmp_path / "ray/_decisions" / f"{name}.parquet").to_pylist()
        assert a == b
        checked += sum(1 for r in a if r["reason"] and r["reason"].startswith(("duplicate", "overlaps")))
    assert checked >= 20


def test_thumbnail_data_of_an_eval_image(eval_dir):
    from recaption.dedup.overlap import eval_image

    assert Image.open(io.BytesIO(eval_image(str(eval_dir), "val/chelsea.jpg"))).size == (451, 300)
    assert eval_image(str(eval_dir), "more/h1") == PHOTOS[3].read_bytes()


def test_every_rules_reason_falls_in_the_category_the_summary_counts_it_under():
    """`removal.categories_of` (verify's) inverts the reasons `dedup` writes, for every rule, for
    duplicates and overlaps, whatever the partner's name holds; other reasons are none of them."""
    import numpy as np
    import pyarrow as pa

    from recaption.dedup import duplicates
    from recaption.mixing import removal

    codes = np.array(sorted(duplicates.RULE_NAMES), np.int8)
    n = len(codes)
    drops = duplicates.FileDrops(np.arange(n, dtype=np.int32), codes, np.zeros(n, np.int32),
                                 np.zeros(n, np.int32), np.full(n, 0.93, np.float32))
    names = pa.array([f"00001/odd (phash, {i})" for i in range(n)])
    for start, prefix in removal.CATEGORY.items():
        texts = duplicates.reasons(drops, names, prefix=start.strip())
        assert all(t.startswith(start) for t in texts.to_pylist())
        assert removal.categories_of(texts).to_pylist() == [duplicates.category(c, prefix) for c in codes]
    others = ["filter: min-side 120 < 200", "decode: truncated", "duplicate of 00001/k (no such rule, 1)", ""]
    assert removal.categories_of(pa.array(others)).null_count == len(others)
