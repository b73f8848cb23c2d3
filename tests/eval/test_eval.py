"""eval/: metrics against hand-computed values; both commands run on bundled data with tiny models."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest

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
    from tests.test_end_to_end import cli

    a = tmp_path / "ann"
    assert cli("annotate", shard_dir, "-o", a, "-c", "sieve", "--model", tiny_models["blip"], "--num-captions", 2,
               "--clip-model", tiny_models["clip"], "--sieve-model", minilm, "-q") == 0
    cs = _load("compare_strategies")
    table = {r["strategy"]: r for r in cs.main([str(a), "--fraction", "0.5"])}
    assert set(table) == {"raw", "synthetic", "threshold", "both", "sieve"}
    for r in table.values():
        assert r["kept"] + r["dropped"] == 18 and r["kept"] == r["raw"] + r["replaced"]
    assert table["synthetic"]["replaced"] == 18 and table["raw"]["replaced"] == 0
    # the dry run of the same mix agrees
    from recaption import api
    from recaption.mixing.strategies import MixConfig

    dry = api.mix(str(shard_dir), str(a), None, MixConfig("threshold", fraction=0.5, filter_synthetic=True),
                  dry_run=True)
    assert dry["counts"]["written"] == table["threshold"]["kept"]
    assert dry["counts"]["synthetic"] == table["threshold"]["replaced"]
