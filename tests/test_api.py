"""The Python API a notebook user gets from `import recaption as rc` (issue 37): every public name
lazily, settings as mappings checked against the declarations (a misspelt name or a wrong type is
one line with a suggestion, and nothing is created), results that are the summary dicts with
counts, paths, tables, drops and a report on top; README's example run as written."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import recaption as rc
from recaption import annotators, api
from recaption.errors import RecaptionError
from tests.helpers import annotate_randomly, summary

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pyarrow", "ray", "open_clip", "transformers")


def python_api_section() -> str:
    """README.md's "Python API" section."""
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]


def fresh_python(code: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    """`code` run in a new interpreter that imports this checkout's recaption."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=e, capture_output=True, text=True, timeout=600)


# -- one import, nothing heavy ---------------------------------------------------------------------
@pytest.mark.slow
def test_import_recaption_imports_nothing_heavy(tmp_path):
    """`import recaption` imports no torch, pyarrow, numpy or Ray; every public name, verbs and
    config types included, can then be looked up without torch, pyarrow or Ray."""
    code = ("import sys\nimport recaption as rc\n"
            f"bare = [m for m in {HEAVY + ('numpy',)!r} if m in sys.modules]\n"
            "names = {n: getattr(rc, n) for n in rc.__all__}\n"
            f"after = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "print(bare, after, len(names), callable(rc.report), callable(rc.recipes))")
    p = fresh_python(code, tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["[]", "[]", str(len(rc.__all__)), "True", "True"]


@pytest.mark.slow
def test_a_config_is_built_without_numpy(tmp_path):
    """`rc.MixConfig(...)` (and every other config type) is built with no numpy, pyarrow or torch
    imported: MixConfig's module imported numpy (it held the strategies' column code too)."""
    configs = [n for n, m in rc._PUBLIC.items()
               if m not in {"recaption.api", "recaption.results", "recaption.demo", "recaption.errors"}]
    assert "MixConfig" in configs and "ClipConfig" in configs
    code = ("import sys\nimport recaption as rc\n"
            "rc.MixConfig(strategy='sieve', fraction=0.2, filters={'min-side': 200}, dedup={'exact': None})\n"
            "rc.RerankStep('ViT-B-32')\n"
            f"for n in {[n for n in configs if n != 'RerankStep']!r}:\n    getattr(rc, n)()\n"
            f"print([m for m in {HEAVY + ('numpy',)!r} if m in sys.modules])")
    p = fresh_python(code, tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["[]"]


def test_every_public_name_resolves_and_is_documented():
    section = python_api_section()
    missing = [n for n in rc.__all__ if f"`{n}`" not in section]
    assert not missing, f"README's Python API section lists no {missing}"
    for n in rc.__all__:
        assert getattr(rc, n) is not None
    assert rc.annotate is api.annotate and rc.MixConfig.__name__ == "MixConfig"


def test_the_verbs_stay_verbs_once_their_namesake_packages_are_imported():
    """recaption/report/ and recaption/recipes/ are subpackages: importing them must not turn
    `rc.report` and `rc.recipes` into modules."""
    import recaption.recipes  # noqa: F401
    import recaption.report.data  # noqa: F401

    assert rc.report is api.report and rc.recipes is api.recipes
    with pytest.raises(AttributeError):
        rc.annotat  # noqa: B018


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path):
    """The Python API section's code block, in a fresh interpreter, offline, with one import."""
    (block,) = re.findall(r"```python\n(.*?)```", python_api_section(), flags=re.S)
    assert [ln for ln in block.splitlines() if ln.startswith(("import ", "from "))] == ["import recaption as rc"]
    p = fresh_python(block, tmp_path, RECAPTION_CACHE=str(tmp_path / "cache"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "did you mean strategy?" in p.stdout
    assert (tmp_path / "work" / "report" / "index.html").is_file()
    assert summary(tmp_path / "work" / "mixed")["strategy"] == "sieve"


# -- mappings, checked against the declarations ---------------------------------------------------
def refused(fn, *args, **kw) -> str:
    """The one line a call is refused with."""
    with pytest.raises(RecaptionError) as e:
        fn(*args, **kw)
    text = str(e.value)
    assert "\n" not in text
    return text


ANNOTATE_REFUSALS = [
    (dict(clipp={"model": "ViT-L-14"}), "did you mean clip?"),  # a misspelt annotator
    (dict(overwite=True), "did you mean overwrite?"),  # a misspelt argument
    (dict(clip={"modle": "ViT-L-14"}), "unknown clip key 'modle'; did you mean model?"),
    (dict(captions={"captioner": "sieve", "num_captons": 2}), "did you mean num_captions"),
    (dict(metrics={"lang_modle": "x"}), "did you mean lang_model?"),
    (dict(rerank=[{"model": "ViT-B-32", "topk": 1}]), "did you mean top_k?"),
    (dict(decode={"batch_sise": 8}), "did you mean batch_size?"),
    (dict(execution={"engine": "ray", "ray_adress": "auto"}), "did you mean ray_address?"),
    (dict(clip={"model": 14}), "clip.model must be text, got 14"),  # wrong types
    (dict(captions={"captioner": "sieve", "num_captions": "2"}), "captions.num_captions must be a whole number"),
    (dict(captions={"captioner": "sieve", "top_p": "high"}), "captions.top_p must be a number"),
    (dict(sieve={"mask": 3}), "sieve.mask must be text"),
    (dict(metrics={"lang_model": 3}), "metrics.lang_model must be text"),
    (dict(decode={"limits": {"max_json_bytes": "1k"}}), "decode.limits.max_json_bytes must be a whole number"),
    (dict(execution={"workers": "2"}), "execution.workers must be a whole number"),
    (dict(execution={"actor_cpus": "half"}), "execution.actor_cpus must be a number"),
    (dict(groups={"short": {"captioner": "blip-base", "wehre": "clip_raw<0.2"}}), "unknown groups.short keys"),
    (dict(groups={"bad name": "blip-base"}), "bad name"),
]


@pytest.mark.parametrize("kw, says", ANNOTATE_REFUSALS, ids=[str(k) for k, _ in ANNOTATE_REFUSALS])
def test_annotate_refuses_a_misspelt_name_or_a_wrong_type_in_one_line(tmp_path, kw, says):
    assert says in refused(rc.annotate, rc.sample_shards(), str(tmp_path / "ann"), **kw)
    assert not (tmp_path / "ann").exists()


def test_annotate_takes_named_groups_as_a_recipe_gives_them(tmp_path, tiny_models):
    ann = tmp_path / "ann"
    rc.annotate(rc.sample_shards(), str(ann), clip={"model": tiny_models["clip"]}, execution={"quiet": True},
                groups={"short": {"captioner": tiny_models["blip"], "caption": {"max_new_tokens": 5}}})
    t = pq.read_table(next(ann.glob("*.parquet")))
    ok = [r for r in t.to_pylist() if r["status"] == "ok"]
    assert ok and all(r["captions__short"] and len(r["clip_captions__short"]) == len(r["captions__short"]) for r in ok)
    assert not any(r["captions"] for r in ok)  # the unnamed group was not asked for
    groups = json.loads((ann / "_recaption.json").read_text())["groups"]
    assert groups["captions.short"]["decoding"]["max_new_tokens"] == 5 and "clip.short" in groups


def test_a_config_object_of_another_annotator_is_refused_with_its_name(tmp_path):
    """Once a bare AttributeError from deep inside the CLIP check."""
    line = refused(rc.annotate, rc.sample_shards(), str(tmp_path / "ann"), clip=rc.SieveConfig())
    assert line.startswith("clip takes a ClipConfig") and "did you mean sieve=?" in line
    assert "takes a ClipConfig" in refused(api.annotator_configs, {"clip": "ViT-L-14"})


MIX_REFUSALS = [
    (dict(fracton=0.3), "did you mean fraction?"),
    (dict(cfg={"alpah": 0.3}), "did you mean alpha?"),
    (dict(strategy="sive"), "did you mean sieve?"),  # the registry's own line
    (dict(fraction="0.3"), "mix.fraction must be a number"),
    (dict(cfg=rc.ClipConfig()), "mix takes a MixConfig or a mapping of its settings, got a ClipConfig"),
]


@pytest.mark.parametrize("kw, says", MIX_REFUSALS, ids=[str(k) for k, _ in MIX_REFUSALS])
def test_mix_refuses_a_misspelt_name_or_a_wrong_type_in_one_line(tmp_path, kw, says):
    assert says in refused(rc.mix, rc.sample_shards(), str(tmp_path / "ann"), str(tmp_path / "out"), **kw)
    assert not (tmp_path / "out").exists()


def test_a_mapping_gives_the_config_its_object_gives(minilm):
    from recaption.annotators.rerank import RerankConfig
    from recaption.captioners.base import load_preset

    got = api.annotator_configs({"captions": {"captioner": "sieve", "num_captions": 2}, "clip": {"model": "ViT-L-14"},
                                 "sieve": True, "rerank": [{"model": "RN50", "top_k": 1}],
                                 "metrics": {"lang_model": None}})
    assert got["captions"] == load_preset("sieve", num_captions=2)
    assert got["clip"] == rc.ClipConfig("ViT-L-14", "openai")
    assert got["sieve"] == rc.SieveConfig(minilm)
    assert got["rerank"] == RerankConfig((rc.RerankStep("RN50", "openai", 1),), got["clip"])
    assert got["metrics"] == annotators.get("metrics").default()
    assert set(got) == {"captions", "clip", "sieve", "rerank", "metrics", "fingerprints"}
    # the objects themselves pass through unchanged
    same = api.annotator_configs(got)
    assert same == got


def test_settings_mappings_become_their_dataclasses():
    ex = api.execution_of({"engine": "ray", "ray_address": "auto", "workers": 2})
    assert ex == rc.Execution(engine="ray", workers=2, options={"ray_address": "auto"})
    assert api.execution_of(ex) is ex
    d = api.decode_of({"batch_size": 8, "limits": {"max_json_depth": 5}})
    assert d.batch_size == 8 and d.limits == rc.ReadLimits(max_json_depth=5)
    cfg = api.mix_config(rc.MixConfig("raw"), {"fraction": 0.2})
    assert (cfg.strategy, cfg.fraction) == ("raw", 0.2)


# -- results ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool(shard_dir, tmp_path_factory):
    return shard_dir, annotate_randomly(shard_dir, tmp_path_factory.mktemp("api") / "ann")


def test_a_mix_result_is_its_summary_with_tables_drops_and_a_report(pool, tmp_path):
    shards, ann = pool
    out = tmp_path / "out"
    res = rc.mix(str(shards), str(ann), str(out), strategy="both", fraction=0.5, filters=["min-clip-raw=0.1"],
                 execution={"quiet": True})
    assert isinstance(res, rc.MixResult) and isinstance(res, dict)
    assert res.to_dict() == summary(out) and type(res.to_dict()) is dict  # what the verb returned before
    assert json.loads(json.dumps(res)) == summary(out)
    drops = res.drops()
    assert drops.equals(pq.read_table(out / "_dropped.parquet"))
    assert res.counts["written"] + drops.num_rows == res.counts["read"]  # every sample in one place
    assert sum(r["samples"] for r in res.drop_reasons) == res.counts["dropped"]
    assert [r["rule"] for r in res.rules] == ["min-clip-raw=0.1"] and res.rules.to_arrow().num_rows == 1
    assert res.paths["out"] == str(out) and Path(res.paths["summary"]).is_file()
    assert res.shards() == [str(p) for p in sorted(out.glob("*.tar"))] and res.ok
    assert "samples read" in repr(res) and "min-clip-raw=0.1" in repr(res) and "<table>" in res._repr_html_()
    check = rc.verify(str(out))
    assert check.ok and check == [] and repr(check) == f"verify: {out} holds"
    page = res.open_report(str(tmp_path / "report"), show=False)
    assert Path(page).is_file() and Path(page).name == "index.html"


def test_a_dry_run_result_tables_every_strategy_and_has_no_drops(pool, tmp_path):
    shards, ann = pool
    dry = rc.mix(str(shards), str(ann), strategy="threshold", fraction=0.5, filter_synthetic=True, dry_run=True)
    assert len(dry.strategies) == len(dry["strategies"]) > 1
    assert dry.strategies.column("strategy") == [r["strategy"] for r in dry["strategies"]]
    assert dry.strategies.to_arrow().num_rows == len(dry.strategies)
    assert "every strategy side by side" in repr(dry)
    assert "out" not in dry.paths and dry.shards() == []
    assert "a dry run writes nothing" in refused(dry.drops)
    assert not (tmp_path / "out").exists()
