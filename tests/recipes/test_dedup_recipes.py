"""Issue 25.6: a recipe's `dedup` and `decontaminate` sections, set with --set on any recipe: checked
like the command line's options, run end to end by `recaption run`, and a change of them alone redoes
only the mix. No bundled recipe pins a duplicate threshold: no source gives one for these
fingerprints (docs/formats.md#thresholds)."""
import json

import pytest

from recaption.errors import RecaptionError
from recaption.recipes import list_recipes, load_recipe, recipe_parts
from tests.helpers import PHOTOS, accounted, cli, photo_shards, summary


def test_sections_through_set():
    sets = ["dedup.exact=true", "dedup.phash=true", "dedup.keep=best:clip_raw"]
    p = recipe_parts(load_recipe("datacomp-basic", sets))
    assert p.mix.dedup == {"exact": None, "phash": 2} and p.mix.dedup_keep == "best:clip_raw"
    p = recipe_parts(load_recipe("datacomp-basic", ["dedup=[exact, phash=3]", "decontaminate=/data/imagenet-val"]))
    assert p.mix.dedup == {"exact": None, "phash": 3}
    assert p.mix.decontaminate == "/data/imagenet-val" and p.mix.decontaminate_rules == {"exact": None, "phash": 8}
    p = recipe_parts(load_recipe("datacomp-basic", ["decontaminate.eval=/v", "decontaminate.phash=12"]))
    assert p.mix.decontaminate_rules == {"phash": 12}


@pytest.mark.parametrize("sets, said", [
    (["dedup.fuzzy=1"], "unknown dedup keys"), (["dedup.embedding=0.95"], "clip.save_embeddings"),
    (["decontaminate.phash=8"], "needs eval"), (["dedup.phash=40"], "0 to 32")])
def test_bad_sections_are_refused(sets, said):
    with pytest.raises(RecaptionError, match=said):
        load_recipe("datacomp-basic", sets)


def test_no_bundled_recipe_pins_a_duplicate_threshold():
    """laion-5b removes exact duplicates (identical bytes: no threshold); no recipe sets a distance."""
    for name, r in list_recipes().items():
        assert "decontaminate" not in r, name
        assert all(v is None for v in recipe_parts(r).mix.dedup.values()), name


def test_run_with_dedup_and_decontaminate(tmp_path):
    shards = photo_shards(tmp_path / "in")
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "rocket.jpg").write_bytes(PHOTOS[4].read_bytes())
    out = tmp_path / "out"
    sets = ["filters=false", "dedup=[exact, phash]", f"decontaminate.eval={bench}", "decontaminate.exact=true"]
    assert cli("run", "datacomp-basic", shards, "-o", out, *[x for s in sets for x in ("--set", s)], "-q") == 0
    written, drops = accounted(out, shards)
    assert written == {"orig-astronaut", "orig-chelsea", "orig-coffee", "orig-hubble", "astronaut-crop5",
                       "chelsea-crop5", "coffee-crop5", "hubble-crop5", "rocket-q60", "rocket-crop5"}
    assert drops["orig-rocket"] == drops["rocket-bytes"] == "overlaps bench/rocket.jpg (sha256, identical)"
    assert drops["rocket-half"] == "duplicate of 00001/rocket-q60 (phash, 0)"  # the first of what is left
    s = summary(out)
    assert [r["rule"] for r in s["dedup"]] == ["exact", "phash=2"] and s["decontaminate"]["rules"][0]["rule"] == "exact"
    # only the duplicate rules change: the annotations stay, the mix is redone
    before = {p.name: p.stat().st_mtime_ns for p in (out / "_annotations").glob("*.parquet")}
    sets[1] = "dedup=[exact]"
    assert cli("run", "datacomp-basic", shards, "-o", out, *[x for s in sets for x in ("--set", s)],
               "--overwrite", "-q") == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "_annotations").glob("*.parquet")} == before
    assert "rocket-half" in accounted(out, shards)[0]
    assert json.loads((out / "_recaption.json").read_text())["identity"]["recipe"]["dedup"] == ["exact"]
