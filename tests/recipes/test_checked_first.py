"""Issue 31.8: everything a run needs is checked before anything is created, each in one line
naming the key: --set values against their declared type and range, the folders it will read,
and a mix that reads scores the recipe does not compute."""
import pytest

from recaption import annotators
from recaption.recipes import list_recipes, load_recipe, recipe_parts
from tests.helpers import cli


@pytest.mark.parametrize("assignment, names", [
    ("batch_size=0", "batch_size must be at least 1"),
    ("batch_size=abc", "batch_size must be a whole number"),
    ("caption.num_captions=1.5", "caption.num_captions must be a whole number"),
    ("caption.num_captions=abc", "caption.num_captions must be a whole number"),
    ("caption.top_p=high", "caption.top_p must be a number"),
    ("clip.batch_size=0", "clip.batch_size must be at least 1"),
    ("mix.samples_per_shard=2.5", "mix.samples_per_shard must be a whole number"),
    ("mix.filter_synthetic=3", "mix.filter_synthetic must be true or false"),
    ("clip=false", "reads the clip columns"),
    ("sieve=null", "reads the sieve columns"),
    ("decontaminate={eval}", "decontaminate {eval}: not found"),
])
def test_run_refuses_before_creating_anything(assignment, names, shard_dir, tiny_models, tmp_path, capsys):
    missing = str(tmp_path / "no-such-eval")
    out = tmp_path / "out"
    sets = [f"caption.model={tiny_models['blip']}", f"clip.model={tiny_models['clip']}",
            assignment.replace("{eval}", missing)]
    assert cli("run", "sieve", shard_dir, "-o", out, *[x for s in sets for x in ("--set", s)], "-q") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and names.replace("{eval}", missing) in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


def test_mix_refuses_a_missing_evaluation_set_before_creating_anything(shard_dir, tmp_path, capsys):
    from tests.helpers import annotate_randomly

    ann = annotate_randomly(shard_dir, tmp_path / "ann")
    out = tmp_path / "out"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "--decontaminate",
               tmp_path / "missing", "-q") == 2
    assert "not found" in capsys.readouterr().err and not out.exists()


def test_every_bundled_recipe_passes_its_own_checks():
    from recaption.recipes import missing_groups

    for name in list_recipes():
        parts = recipe_parts(load_recipe(name))
        assert missing_groups(parts) == [], name  # each computes what its mix reads


def test_a_value_of_the_right_type_is_accepted():
    r = load_recipe("sieve", ["caption.num_captions=3", "batch_size=8", "mix.fraction=1", "caption.top_p=1"])
    assert r["caption"]["num_captions"] == 3 and r["batch_size"] == 8


def test_each_strategy_names_the_groups_its_cut_reads():
    from recaption.mixing.strategies.base import table
    from recaption.recipes import CUT_COLUMNS, missing_groups

    owner = {c: g for g in annotators.names() for c in annotators.group_columns(g)}
    for name, kind in table().by_name.items():
        base = load_recipe("sieve", [f"mix.strategy={name}", "mix.filter_synthetic=false"])
        reads = {owner[c] for c in CUT_COLUMNS[kind.column]} | ({"captions"} if kind.needs_synthetic else set())
        for group in reads:
            section = next(k for k in (annotators.get(group).recipe_keys or (group,)) if base.get(k))
            r = dict(base, **{section: None})
            assert group in missing_groups(recipe_parts(r)), (name, group)
        assert missing_groups(recipe_parts(base)) == []


def test_a_recipe_given_as_a_dict_is_checked_as_a_loaded_one(shard_dir, tmp_path):
    from recaption import api
    from recaption.errors import RecaptionError

    r = load_recipe("sieve")
    r["caption"] = {"num_captions": 1.5}
    with pytest.raises(RecaptionError, match="caption.num_captions must be a whole number"):
        api.run(r, str(shard_dir), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
