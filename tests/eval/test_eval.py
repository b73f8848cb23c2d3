"""eval/: metrics against hand-computed values; both commands run on bundled data with tiny models."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from tests.helpers import strategy_names

EVAL = Path(__file__).resolve().parents[2] / "eval"


def _load(name):
    sys.path.insert(0, str(EVAL))
    spec = importlib.util.spec_from_file_location(f"eval_{name}", EVAL / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


m = _load("metrics")


def test_bleu4_by_hand():
    assert m.bleu4(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1.0)
    # p1..p4 = 5/6, 3/5, 2/4, 1/3, equal lengths
    assert m.bleu4(["the cat sat on a mat"], [["the cat sat on the mat"]]) == pytest.approx(
        (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # all precisions 1, brevity penalty exp(1 - 6/4); the closest reference length is used
    assert m.bleu4(["the cat sat on"], [["the cat sat on the mat", "a b c d e f g h i j"]]) == pytest.approx(
        math.exp(-0.5))
    assert m.bleu4(["a b c"], [["a b c"]]) == 0.0  # no 4-gram at all


def test_cider_d_by_hand():
    # two images, exact matches: unigram and bigram similarities 1, tri/4-grams absent -> 10 * 2/4
    assert m.cider_d(["a b", "c d"], [["a b"], ["c d"]]) == pytest.approx(5.0)
    # 'a c' vs 'a b': unigram cosine 1/2, bigram 0 -> 10 * 0.5/4 = 1.25; mean with 5.0
    assert m.cider_d(["a c", "d e"], [["a b"], ["d e"]]) == pytest.approx((1.25 + 5.0) / 2)
    assert m.cider_d(["x y"], [["x y"]]) == 0.0  # one image: every idf is log(1/1) = 0


def test_clip_s_and_ref_clip_s():
    assert m.clip_s(0.3) == pytest.approx(0.75) and m.clip_s(-0.1) == 0.0
    assert m.ref_clip_s(0.3, [0.5, 0.8]) == pytest.approx(2 * 0.75 * 0.8 / 1.55)
    assert m.ref_clip_s(-0.2, [0.5]) == 0.0


# Each expectation was written from the PTB rules (lowercase; clitics 's n't 're 've 'll 'd 'm split
# off; hyphenated words, decimals, 1,000 and 4:45 whole; brackets as -lrb- ...; pycocoevalcap's
# punctuation list dropped), then checked against pycocoevalcap 1.2's Java tokenizer.
PTB_CASES = [
    ("There's a man's dog; it isn't here.",
     ["there", "'s", "a", "man", "'s", "dog", "it", "is", "n't", "here"]),
    ("We're here, you've seen, they'll go, he'd say, I'm fine.",
     ["we", "'re", "here", "you", "'ve", "seen", "they", "'ll", "go", "he", "'d", "say", "i", "'m", "fine"]),
    ('"Hello," she said -- I can\'t believe they wouldn\'t\'ve.',
     ["hello", "she", "said", "i", "ca", "n't", "believe", "they", "would", "n't", "'ve"]),
    ("A black-and-white photo of 3.5 cats, 1,000 dogs and 2 birds!",
     ["a", "black-and-white", "photo", "of", "3.5", "cats", "1,000", "dogs", "and", "2", "birds"]),
    ("A 3-year-old boy's 2.5-inch toy, an x-ray; T-SHIRT.",
     ["a", "3-year-old", "boy", "'s", "2.5-inch", "toy", "an", "x-ray", "t-shirt"]),
    ("A (small) dog [on] a {mat} ... ok... fine?",
     ["a", "-lrb-", "small", "-rrb-", "dog", "-lsb-", "on", "-rsb-", "a", "-lcb-", "mat", "-rcb-", "ok", "fine"]),
    ("The dogs' bowls & the cat's toys: 40% off $16.75 at 4:45pm.",
     ["the", "dogs", "bowls", "&", "the", "cat", "'s", "toys", "40", "%", "off", "$", "16.75", "at", "4:45", "pm"]),
    ("U.S. flag near Mr. Smith's St. Louis home, e.g. here.",
     ["u.s.", "flag", "near", "mr.", "smith", "'s", "st.", "louis", "home", "e.g.", "here"]),
    ("A man--a woman - and a child – and — more … end",
     ["a", "man", "a", "woman", "and", "a", "child", "and", "more", "end"]),
    ("'quoted' `single` ``double'' \"double\" ‘curly’ “curly”",
     ["quoted", "single", "double", "double", "curly", "curly"]),
    ("there’s O’Neil’s dogs’ toys, don’t!! cannot?!",
     ["there", "'s", "o’neil", "'s", "dogs", "toys", "do", "n't", "!!", "can", "not", "?!"]),
]


@pytest.mark.parametrize("text,tokens", PTB_CASES)
def test_tokenize_matches_ptb(text, tokens):
    assert m.tokenize(text) == tokens


# Punctuation-heavy captions; the expected scores come from pycocoevalcap 1.2 itself (its Java
# PTBTokenizer, then Bleu(4) and Cider), not from this code. The old [a-z0-9]+ tokenizer gave
# BLEU-4 0.5504 and CIDEr-D 3.6583 here.
PUNCT_HYPS = [
    "There's a black-and-white dog; it isn't running.",
    "A man's T-shirt (red) costs $16.75, doesn't it?",
    "Two cats -- one's asleep... the other's 3.5 years old!",
    '"Stop" sign at the U.S. border, e.g. near St. Louis.',
]
PUNCT_REFS = [
    ["there's a black and white dog that isn't running", "A black-and-white dog; it's not running.",
     "a dog, black-and-white, stands still"],
    ["The man's red T-shirt costs $16.75.", "a man in a red t-shirt (price: $16.75)",
     "A man wearing a red shirt doesn't smile."],
    ["Two cats: one's asleep, the other's awake.", "two cats -- one is 3.5 years old",
     "Two cats, one asleep and one 3.5 years old!"],
    ['A "stop" sign near the U.S. border.', "a stop sign at the border near st. louis",
     'The U.S. border, with a "Stop" sign.'],
]


def test_bleu_and_cider_equal_pycocoevalcap_on_punctuated_captions():
    # pycocoevalcap's BLEU adds 1e-15 / 1e-9 to each precision, hence the tolerance
    assert m.bleu4(PUNCT_HYPS, PUNCT_REFS) == pytest.approx(0.520126844729895, abs=1e-9)
    assert m.cider_d(PUNCT_HYPS, PUNCT_REFS) == pytest.approx(3.190296513754831, abs=1e-12)


def test_clip_scores_embed_texts_with_the_clipscore_prefix(tiny_models):
    from PIL import Image

    from recaption.scoring.clip import ClipConfig, ClipScorer

    ce = _load("caption_eval")
    clip = ClipScorer(ClipConfig(tiny_models["clip"], None, device="cpu"))
    paths, refs = ce.load_coco(EVAL / "data" / "coco-mini")
    img = clip.encode_images([Image.open(paths[0]).convert("RGB")])
    hyp = "a red circle."
    seen, encode = [], clip.encode_texts
    clip.encode_texts = lambda texts: seen.extend(texts) or encode(texts)
    cs, rcs = ce.clip_scores(clip, img, [hyp], refs[:1])

    assert seen == ["A photo depicts " + x for x in [hyp] + refs[0]]
    t = encode(seen)
    cos = float(img[0] @ t[0])
    assert cs[0] == pytest.approx(2.5 * max(cos, 0.0), abs=1e-6)
    assert rcs[0] == pytest.approx(m.ref_clip_s(cos, (t[1:] @ t[0]).tolist()), abs=1e-6)


def test_length_and_trigrams():
    assert m.mean_length(["a b c d", "A, b c!"]) == 3.5
    assert m.unique_trigrams(["a b c d", "a b c"]) == 2


def test_caption_eval_runs_on_bundled_set(tiny_models, tmp_path):
    ce = _load("caption_eval")
    res = ce.main(["--captioner", tiny_models["blip"], "--clip-model", tiny_models["clip"],
                   "--json", str(tmp_path / "r.json")])
    assert res["images"] == 8 and 0 <= res["bleu4"] <= 1 and res["cider_d"] >= 0
    assert 0 <= res["clip_s"] <= 2.5 and res["mean_length"] > 0
    assert (tmp_path / "r.json").exists()


def test_compare_strategies_table(tiny_models, minilm, shard_dir, tmp_path):
    from tests.helpers import cli

    a = tmp_path / "ann"
    assert cli("annotate", shard_dir, "-o", a, "-c", "sieve", "--model", tiny_models["blip"], "--num-captions", 2,
               "--clip-model", tiny_models["clip"], "--sieve-model", minilm, "-q") == 0
    cs = _load("compare_strategies")
    table = {r["strategy"]: r for r in cs.main([str(a), "--fraction", "0.5"])}
    assert set(table) == set(strategy_names())
    for r in table.values():
        assert r["kept"] + r["dropped"] == 18 and r["kept"] == r["raw"] + r["replaced"]
    # every strategy keeps its fraction as `mix --fraction` does: at least int(18 * 0.5) + 1 of 18
    assert table["synthetic"]["raw"] == 0 and table["synthetic"]["replaced"] >= 10
    assert table["raw"]["replaced"] == 0 and table["both"]["kept"] == table["raw"]["kept"] < 18
    # the dry run of the same mix agrees
    from recaption import api
    from recaption.mixing.strategies import MixConfig

    dry = api.mix(str(shard_dir), str(a), None, MixConfig("threshold", fraction=0.5, filter_synthetic=True),
                  dry_run=True)
    assert dry["counts"]["written"] == table["threshold"]["kept"]
    assert dry["counts"]["synthetic"] == table["threshold"]["replaced"]
    # on a mix's output folder too (its annotations found through its record), without a crash
    out = tmp_path / "mixed"
    assert cli("mix", shard_dir, "-a", a, "-o", out, "--strategy", "raw", "--fraction", "0.5", "-q") == 0
    on_out = {r["strategy"]: r for r in cs.main([str(out), "--fraction", "0.5"])}
    written = json.loads((out / "_summary.json").read_text())["counts"]["written"]
    assert on_out["raw"]["kept"] == table["raw"]["kept"] == written
