"""Issue 36 item 4: long captions scored honestly. Every caption's token count under the CLIP
tokenizer is recorded beside the model's context length; a caption longer than the context is
scored sentence by sentence against the image embedding the pass already made (min and mean kept);
`--clean-floor` writes it without the sentences scoring below the floor; a changed floor is
noticed on resume. Captions here are longer than the tiny CLIP's context (77 tokens, read from it)."""
from __future__ import annotations

import json
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from recaption.demo.samples import make_sample, write_tar
from recaption.io import embeddings
from recaption.output import caption_keys
from recaption.scoring import sentences
from tests.helpers import cli

FACTS = ["A red square sits on a blue background.", "There is a small cat in the corner!",
         "Nobody knows why it was taken?", "The photo was made in Paris, France, in the summer of 2019.",
         "A \"green\" circle overlaps the square.", "(The light comes from the left.)",
         "Three birds fly over the roofs of old houses near the river."]


def long_text(rng: random.Random, n: int = 9) -> str:
    """Sentences drawn from FACTS, some separated by line breaks: always past 77 tokens."""
    parts = [rng.choice(FACTS) for _ in range(n)]
    return "".join(p + rng.choice([" ", "  ", "\n"]) for p in parts[:-1]) + parts[-1]


def oracle_split(text: str) -> list[str]:
    """The documented rule with Python's re (recaption splits with Arrow's RE2)."""
    marked = re.sub(r"""([.!?]["')\]]*)\s+""", "\\1\0", re.sub(r"\s*\n\s*", "\0", text))
    return [p.strip() for p in marked.split("\0") if p.strip()]


@pytest.fixture(scope="module")
def long_pool(tmp_path_factory):
    """One shard whose even samples have long alt-texts, and imported candidates: a short and a
    long one a sample, or a long one alone."""
    root = tmp_path_factory.mktemp("long")
    rng = random.Random(3)
    samples, caps = [], {"key": [], "caption": []}
    for i in range(8):
        key = f"0000{i:05d}"
        s = make_sample(rng, key)
        if i % 2 == 0:
            s["txt"] = long_text(rng).encode()
        samples.append((key, s))
        if i % 4 != 1:  # the others have a long candidate alone: their synthetic caption is long
            caps["key"].append(key)
            caps["caption"].append(f"a short caption {i}")
        caps["key"].append(key)
        caps["caption"].append(long_text(rng, 8 + i % 3))
    write_tar(root / "shards" / "00000.tar", samples)
    pq.write_table(pa.table(caps), root / "caps.parquet")
    return root


def _score(root, tiny_models, ann, *extra):
    assert cli("import-captions", root / "shards", "--captions", root / "caps.parquet", "-o", ann, "-q") == 0
    return cli("score", root / "shards", "-a", ann, "--clip-model", tiny_models["clip"], "--no-sieve",
               "--save-embeddings", "-q", *extra)


def test_the_split_rule_as_documented():
    got = sentences.split(pa.array(["One. Two!  Three? \"Four.\" five\n six", "no end", "e.g. this", None, "",
                                    " . .", "a.b c"])).to_pylist()
    assert got == [["One.", "Two!", "Three?", "\"Four.\"", "five", "six"], ["no end"], ["e.g.", "this"], None, [],
                   [".", "."], ["a.b c"]]
    rng = random.Random(0)
    texts = [long_text(rng) for _ in range(20)]
    assert sentences.split(pa.array(texts)).to_pylist() == [oracle_split(t) for t in texts]
    kept = sentences.join_kept(sentences.split(pa.array(["A. B. C.", None, "D."])),
                               np.array([True, False, True, False]))
    assert kept.to_pylist() == ["A. C.", None, ""]
    lo, mean = sentences.reduce(np.array([1.0, 3.0, 2.0]), np.array([2, 0, 1]))
    assert lo.tolist()[::2] == [1.0, 2.0] and mean.tolist()[::2] == [2.0, 2.0] and np.isnan(lo[1])


def test_a_text_of_any_number_of_sentences_is_at_most_max_pieces():
    """A hostile alt-text of a hundred thousand full stops is MAX pieces to score and to key, its
    text kept whole in the last one; a text of exactly MAX is split as before."""
    m = sentences.MAX
    many = [f"s{i}." for i in range(100_000)]
    exact = [f"e{i}." for i in range(m)]
    got = sentences.split(pa.array([" ".join(many), "A. B.", " ".join(exact), None, " ".join(many[: m + 1])]))
    got = got.to_pylist()
    assert got[0][: m - 1] == many[: m - 1] and got[0][m - 1] == " ".join(many[m - 1:]) and len(got[0]) == m
    assert got[1] == ["A.", "B."] and got[2] == exact and got[3] is None
    assert got[4] == many[: m - 1] + [f"{many[m - 1]} {many[m]}"]


def test_token_counts_sentence_scores_and_cleaned_captions(long_pool, tiny_models, tmp_path, monkeypatch):
    import open_clip

    from recaption.scoring.clip import ClipConfig, ClipScorer

    # the sentence scores reuse the clip group's image embedding: one image forward per sample
    seen = []
    forward = ClipScorer.encode_pixels
    monkeypatch.setattr(ClipScorer, "encode_pixels", lambda self, x: seen.append(len(x)) or forward(self, x))
    floor = -0.3
    ann = tmp_path / "ann"
    assert _score(long_pool, tiny_models, ann, "--clean-floor", floor) == 0
    t = pq.read_table(ann / "00000.parquet")
    rows = t.to_pylist()
    assert sum(seen) == len(rows) == 8

    scorer = ClipScorer(ClipConfig(model=tiny_models["clip"]))
    context = scorer.model.context_length
    assert context == 77
    bpe = open_clip.get_tokenizer(tiny_models["clip"])
    vectors, _ = embeddings.read(str(ann), "00000")
    long_seen = short_seen = dropped = kept = 0
    for r, v in zip(rows, vectors.astype(np.float32)):
        assert r["status"] == "ok" and r["clip_context"] == context
        texts = [r["raw_caption"], *r["captions"]]
        got = [(r["clip_raw_tokens"], r["clip_raw_sent_min"], r["clip_raw_sent_mean"], None)] + list(zip(
            r["clip_captions_tokens"], r["clip_captions_sent_min"], r["clip_captions_sent_mean"],
            r["captions_clean"]))
        for j, (text, (n, lo, mean, clean)) in enumerate(zip(texts, got)):
            if text is None:  # no alt-text: nothing counted
                assert n is None and lo is None
                continue
            assert n == len(bpe.encode(text)) + 2
            if n <= context:  # the score saw all of it: no sentence scores, nothing cleaned
                assert lo is None and mean is None and clean is None
                short_seen += 1
                continue
            long_seen += 1
            parts = oracle_split(text)
            emb = scorer.encode_texts(parts).numpy()
            s = emb @ v
            assert lo == pytest.approx(s.min(), abs=3e-3) and mean == pytest.approx(s.mean(), abs=3e-3)
            if j:  # candidates are cleaned; the alt-text is not
                assert np.all(np.abs(s - floor) > 3e-3), "a sentence too near the floor to check"
                assert clean == " ".join(p for p, x in zip(parts, s) if x >= floor)
                dropped += int((s < floor).sum())
                kept += int((s >= floor).sum())
    assert long_seen >= 12 and short_seen >= 8 and dropped and kept  # both sides of the floor are tested
    groups = json.loads((ann / "_recaption.json").read_text())["groups"]
    assert groups["length"]["clean_floor"] == floor and groups["length"]["split"] == sentences.SPLIT


def test_a_changed_floor_is_noticed_on_resume(long_pool, tiny_models, tmp_path, capsys):
    ann = tmp_path / "ann"
    assert _score(long_pool, tiny_models, ann, "--clean-floor", -0.3) == 0
    before = pq.read_table(ann / "00000.parquet")
    args = ("score", long_pool / "shards", "-a", ann, "--clip-model", tiny_models["clip"], "--no-sieve",
            "--save-embeddings", "-q")
    assert cli(*args, "--clean-floor", -0.3) == 0  # the same floor resumes: nothing redone
    assert pq.read_table(ann / "00000.parquet").equals(before)
    capsys.readouterr()
    assert cli(*args, "--clean-floor", 0.5) != 0
    assert "length" in capsys.readouterr().err
    assert cli(*args, "--clean-floor", 0.5, "--overwrite") == 0
    after = pq.read_table(ann / "00000.parquet")
    assert json.loads((ann / "_recaption.json").read_text())["groups"]["length"]["clean_floor"] == 0.5
    cleaned = [c for cs in after["captions_clean"].to_pylist() for c in cs if c is not None]
    assert cleaned and all(c == "" for c in cleaned)  # random weights: no sentence scores 0.5
    for c in ("clip_raw", "clip_captions", "clip_captions_tokens", "clip_captions_sent_min"):
        assert after[c].equals(before[c]), c


def test_floors_that_are_not_numbers_are_refused_before_any_work(long_pool, tiny_models, tmp_path, capsys):
    for bad in ("nan", "inf"):
        assert cli("score", long_pool / "shards", "-a", tmp_path / "a", "--clip-model", tiny_models["clip"],
                   "--no-sieve", "--clean-floor", bad) != 0
        assert "--clean-floor" in capsys.readouterr().err
        assert not (tmp_path / "a").exists()


def test_a_floor_where_the_group_does_not_run_is_refused(long_pool, tiny_models, tmp_path, capsys):
    for off in ("--no-clip", "--no-clip-length"):
        assert cli("score", long_pool / "shards", "-a", tmp_path / "a", "--clip-model", tiny_models["clip"],
                   "--no-sieve", off, "--clean-floor", 0.2) != 0
        assert off in capsys.readouterr().err
        assert not (tmp_path / "a").exists()
    from recaption import api
    from recaption.errors import RecaptionError

    with pytest.raises(RecaptionError, match="length needs CLIP"):
        api.annotate(str(long_pool / "shards"), str(tmp_path / "b"), length={"clean_floor": 0.2})
    assert not (tmp_path / "b").exists()


def test_no_clip_length_leaves_the_group_out(long_pool, tiny_models, tmp_path):
    ann = tmp_path / "ann"
    assert _score(long_pool, tiny_models, ann, "--no-clip-length") == 0
    assert "length" not in json.loads((ann / "_recaption.json").read_text())["groups"]
    assert set(pq.read_table(ann / "00000.parquet")["clip_raw_tokens"].to_pylist()) == {None}



def test_long_captions_as_sentence_keys_a_trainer_samples(long_pool, tiny_models, tmp_path):
    ann, out, ov = tmp_path / "ann", tmp_path / "mixed", tmp_path / "overlay"
    assert _score(long_pool, tiny_models, ann) == 0
    shards = long_pool / "shards"
    assert cli("mix", shards, "-a", ann, "-o", out, "--strategy", "synthetic", "--caption-keys", "sentences",
               "-q") == 0
    rows = {r["key"]: r for r in pq.read_table(ann / "00000.parquet").to_pylist()}
    samples = list(wds.WebDataset(sorted(map(str, out.glob("*.tar"))), shardshuffle=False))
    assert len(samples) == len(rows)
    split_ones = 0
    for s in samples:
        r, j = rows[s["__key__"]], json.loads(s["json"])
        syn = s["txt"].decode()
        n = r["clip_captions_tokens"][r["captions"].index(syn)]
        keys = [k for k in j if k.startswith(caption_keys.SENTENCE)]
        want = oracle_split(syn) if n > r["clip_context"] else []
        assert keys == [caption_keys.sentence_key(None, i) for i in range(len(want))]
        assert [j[k] for k in keys] == want
        assert all(caption_keys.level_of(k) == "sentences" and caption_keys.is_key(k) for k in keys)
        assert j["recaption_candidate_0"] == r["captions"][0]  # what `all` writes, too
        split_ones += bool(keys)
    assert split_ones >= 2 and split_ones < len(samples)  # long and short synthetic captions both seen

    # the overlay draws a sentence of the long captions into txt as it reads the input shards
    assert cli("mix", shards, "-a", ann, "-o", ov, "--strategy", "synthetic", "--caption-keys", "sentences",
               "--overlay", "-q") == 0
    from recaption.webdataset import overlay

    stage = overlay(str(ov), captions="recaption_sentence_0;recaption_sentence_1;recaption_synthetic",
                    caption_probs=[1, 1, 0], seed=2)
    read = list(wds.WebDataset(str(shards / "00000.tar"), shardshuffle=False).compose(stage))
    by_key = {s["__key__"]: json.loads(s["json"]) for s in samples}
    for s in read:
        j = by_key[s["__key__"]]
        if caption_keys.sentence_key(None, 0) in j:
            assert s["txt"].decode() in (j["recaption_sentence_0"], j.get("recaption_sentence_1"))
        else:
            assert s["txt"].decode() == j["recaption_synthetic"]


def test_sentence_keys_of_a_named_group_are_written_where_its_best_is_long():
    best = pa.array(["One. Two.", "Short.", None])
    cands = pa.array([["One. Two."], ["Short."], []], pa.list_(pa.string()))
    col = caption_keys.group_column(3, [("long", best, cands, np.array([True, False, True]))], "sentences",
                                    (pa.array(["A. B.", None, "C"]), np.array([True, True, False])))
    got = [{e["key"]: e["caption"] for e in row} for row in col.to_pylist()]
    assert list(got[0]) == ["recaption_sentence_0", "recaption_sentence_1", "recaption_group_long",
                            "recaption_group_long_candidate_0", "recaption_group_long_sentence_0",
                            "recaption_group_long_sentence_1"]
    assert got[0]["recaption_group_long_sentence_1"] == "Two." and got[0]["recaption_sentence_0"] == "A."
    assert got[1] == {"recaption_group_long": "Short.", "recaption_group_long_candidate_0": "Short."}
    assert got[2] == {}
    from recaption.mixing import CAPTION_KEYS

    assert caption_keys.LEVELS == CAPTION_KEYS  # the readers' order is the options' (kept apart: no numpy in --help)
    lower = caption_keys.group_column(3, [("long", best, cands, np.array([True, False, True]))], "all")
    assert not any("_sentence_" in e["key"] for row in lower.to_pylist() for e in row)


def test_sentence_keys_need_the_token_counts(long_pool, tiny_models, tmp_path, capsys):
    ann = tmp_path / "ann"
    assert _score(long_pool, tiny_models, ann, "--no-clip-length") == 0
    capsys.readouterr()
    assert cli("mix", long_pool / "shards", "-a", ann, "-o", tmp_path / "m", "--strategy", "synthetic",
               "--caption-keys", "sentences", "-q") != 0
    err = capsys.readouterr().err
    assert "00000.parquet" in err and "length" in err and len(err.strip().splitlines()) == 1


def test_the_report_shows_caption_lengths_and_the_share_truncated(long_pool, tiny_models, tmp_path):
    from recaption.report.data import load
    from recaption.report.html import pages

    ann = tmp_path / "ann"
    assert _score(long_pool, tiny_models, ann) == 0
    rows = pq.read_table(ann / "00000.parquet").to_pylist()
    raw = [r["clip_raw_tokens"] for r in rows if r["clip_raw_tokens"] is not None]
    cands = [n for r in rows for n in r["clip_captions_tokens"]]
    d = load(ann)
    for source, counts in (("alt-text", raw), ("", cands)):
        s = d.lengths[source]
        assert s["n"] == len(counts) and s["tokens"] == sum(counts) and s["context"] == 77
        assert s["truncated"] == sum(n > 77 for n in counts) > 0
    assert d.hists["tokens"]["alt-text"].sum() == len(raw) and d.hists["tokens"]["candidates"].sum() == len(cands)
    page = pages(d)["index.html"].decode()
    assert "caption lengths (CLIP tokens)" in page
    share = 100 * sum(n > 77 for n in cands) / len(cands)
    assert f"{share:.1f}%" in page
