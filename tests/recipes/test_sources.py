"""Issue 17.2: each recipe is pinned to the values its source publishes, so an edit that drifts
from the paper fails here; each names its source and what it does not reproduce."""
from recaption.captioners.base import list_presets
from recaption.recipes import list_recipes, load_recipe, recipe_parts
from tests.helpers import cli


def test_every_recipe_names_its_source():
    for name, r in list_recipes().items():
        src = r.get("source") or {}
        assert src.get("paper") and src.get("values"), name


def test_sieve_is_the_papers():
    r = load_recipe("sieve")
    p = recipe_parts(r)
    d = p.captioner.decoding
    assert (p.captioner.backend, p.captioner.prompt) == ("blip", "a picture of ")
    assert (d.strategy, d.top_p, d.num_captions, d.max_length, d.min_length, d.repetition_penalty) == \
        ("sample", 0.9, 8, 20, 5, 1.1)
    assert r["sieve"] == {"model": "default", "mask": "sieve"} and p.sieve.mask == "sieve"
    assert (p.clip.model, p.clip.pretrained) == ("ViT-L-14", "openai")
    assert (p.mix.strategy, p.mix.fraction, p.mix.alpha) == ("sieve", 0.2, 0.5)
    assert "2310.02110" in r["source"]["paper"] and r["source"]["differs"]


def test_datacomp_clip_score_is_the_papers():
    r = load_recipe("datacomp-clip")
    p = recipe_parts(r)
    assert p.captioner is None and (p.clip.model, p.clip.pretrained) == ("ViT-L-14", "openai")
    assert (p.mix.strategy, p.mix.fraction) == ("raw", 0.3) and "2304.14108" in r["source"]["paper"]


def test_nguyen_is_the_papers():
    r = load_recipe("nguyen-blip2")
    p = recipe_parts(r)
    assert (p.captioner.backend, p.captioner.model) == ("blip2", "Salesforce/blip2-opt-2.7b")
    assert (p.clip.model, p.clip.pretrained) == ("ViT-L-14", "openai")
    assert (p.mix.strategy, p.mix.fraction, p.mix.filter_synthetic) == ("threshold", 0.3, True)
    assert "2307.10350" in r["source"]["paper"] and r["source"]["not_pinned"]


def test_laion_coco_is_the_blogs_two_stage_chain():
    r = load_recipe("laion-coco")
    p = recipe_parts(r)
    assert p.captioner.model == list_presets()["blip-large"]["model"]
    assert p.captioner.decoding.strategy == "sample" and p.captioner.decoding.num_captions == 40
    assert [(s.model, s.pretrained, s.top_k) for s in p.rerank] == [("ViT-L-14", "openai", 5), ("RN50x64", "openai", 1)]
    assert (p.clip.model, p.clip.pretrained) == ("ViT-L-14", "openai")  # the main model: clip_synthetic's scorer
    assert p.mix.strategy == "synthetic"
    assert any("T0" in x for x in r["source"]["differs"])  # the grammar repair it does not run


def test_recipes_verb_shows_sources(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert cli("recipes") == 0
    out = capsys.readouterr().out
    assert "2310.02110" in out and "LAION-COCO" in out
    assert cli("recipes", "laion-coco") == 0
    assert "RN50x64" in capsys.readouterr().out


def test_datacomp_basic_is_the_baselines_code():
    r = load_recipe("datacomp-basic")
    p = recipe_parts(r)
    assert p.captioner is None and p.clip is None and p.sieve is None  # filter metrics only
    # baselines/apply_filter.py: en, len(split()) > 2, len > 5, min(original) >= 200, max/min <= 3.0
    assert p.mix.filters == {"english": None, "min-words": 3, "min-chars": 6, "min-side": 200, "max-aspect": 3.0}
    assert p.mix.strategy == "raw" and p.mix.threshold is None and p.mix.fraction is None
    assert "2304.14108" in r["source"]["paper"] and "apply_filter" in r["source"]["code"]


def test_laion_5b_is_the_papers_post_processing():
    r = load_recipe("laion-5b")
    p = recipe_parts(r)
    assert p.captioner is None and (p.clip.model, p.clip.pretrained) == ("ViT-B-32", "openai")
    assert p.mix.filters == {"min-chars": 5, "min-image-bytes": 5120, "min-clip-raw-en": 0.28,
                             "min-clip-raw-other": 0.26}
    assert p.mix.strategy == "raw" and "2210.08402" in r["source"]["paper"]
    # the multilingual threshold is a setting, not a constant
    other = recipe_parts(load_recipe("laion-5b", ["filters.min-clip-raw-other=0.3"])).mix.filters
    assert other["min-clip-raw-other"] == 0.3
    off = recipe_parts(load_recipe("laion-5b", ["filters.min-clip-raw-other=false"])).mix.filters
    assert "min-clip-raw-other" not in off


def test_basic_filtering_on_any_recipe():
    """Nguyen et al. on a DataComp basic-filtered pool: the mix is unchanged, the rules come first."""
    for sets in (["filters=basic"], ["filters.basic=true"]):
        p = recipe_parts(load_recipe("nguyen-blip2", sets))
        assert p.mix.filters == recipe_parts(load_recipe("datacomp-basic")).mix.filters
        assert (p.mix.strategy, p.mix.fraction, p.mix.filter_synthetic) == ("threshold", 0.3, True)
    p = recipe_parts(load_recipe("datacomp-basic", ["filters.min-side=300"]))
    assert p.mix.filters["min-side"] == 300 and list(p.mix.filters)[3] == "min-side"  # the order stays


def test_any_recipe_takes_the_language_model_of_the_filter_metrics(shard_dir, tmp_path, capsys):
    """`metrics.lang_model`: DataComp's exact filter wants the full lid.176.bin; a missing file is
    one line before anything is created."""
    p = recipe_parts(load_recipe("datacomp-basic", ["metrics.lang_model=/models/lid.176.bin"]))
    assert p.annotators["metrics"] == {"lang_model": "/models/lid.176.bin"}
    assert recipe_parts(load_recipe("datacomp-basic")).annotators["metrics"] == {"lang_model": None}
    out = tmp_path / "out"
    assert cli("run", "datacomp-basic", shard_dir, "-o", out, "--set", "metrics.lang_model=/nope/lid.bin") == 2
    assert "language model not found: /nope/lid.bin" in capsys.readouterr().err and not out.exists()
