"""`recaption run`: every recipe end to end, resume after kill -9, engines giving the same files."""
import subprocess
import sys
import textwrap

import pytest

from recaption.io import annotations as ann
from recaption.recipes import list_recipes, load_recipe
from recaption.errors import RecaptionError
from tests.helpers import dropped, input_samples, read_output, summary, tree_bytes
from tests.helpers import cli


def tiny_sets(recipe, m, minilm, root=None):
    from tests.helpers import tiny_tag_heads

    if recipe == "laion-aesthetics":  # the published head architectures, random weights, a 768-wide CLIP
        h = tiny_tag_heads(root / "heads")
        return [f"punsafe.head={h['punsafe']}", f"aesthetic.head={h['aesthetic_v1']}",
                f"pwatermark.weights={h['pwatermark']}", f"clip.model={h['clip']}", "clip.pretrained=null",
                "batch_size=4"]
    sets = {
        "sieve": [f"caption.model={m['blip']}", "caption.num_captions=2", "caption.max_length=10",
                  f"sieve.model={minilm}"],
        "nguyen-blip2": [f"caption.model={m['blip2']}", "caption.max_new_tokens=4", "caption.num_beams=2"],
        "laion-coco": [f"caption.model={m['blip']}", "caption.num_captions=3", "caption.max_new_tokens=4",
                       f"rerank=[{{model: '{m['clip']}', pretrained: null, top_k: 2}}, "
                       f"{{model: '{m['clip']}', pretrained: null, top_k: 1}}]"],
        "datacomp-clip": [],
        "laion-5b": "tags",
        "datacomp-basic": None,  # no model to replace: the filter metrics only
        # the VLMs replaced by the tiny random-weight Qwen2-VL, through the transformers VLM backend
        # (the recipes' own chat templates), the short captioner by the tiny BLIP
        "recap-datacomp": ["captioner=qwen2-vl-2b-transformers", f"caption.model={m['vlm']}",
                           "caption.max_new_tokens=6"],
        "dreamlip": [f"groups.short.captioner={m['blip']}", "groups.short.caption.max_new_tokens=4",
                     f"groups.long.captioner={m['vlm']}", "groups.long.caption.backend=vlm",
                     "groups.long.caption.max_new_tokens=8"],
        # CapsFusion's LLaMA replaced by the tiny random-weight causal LM (no chat template, as
        # CapsFus-LLaMA has none), through the text backend and the recipe's own fusion prompt
        "capsfusion": [f"groups.short.captioner={m['blip']}", "groups.short.caption.max_new_tokens=4",
                       f"groups.fused.caption.model={m['text_plain']}", "groups.fused.caption.max_new_tokens=6"],
    }[recipe]
    if sets == "tags":  # LAION-5B's two tags: the published architectures, random weights
        h = tiny_tag_heads(root / "heads")
        sets = [f"punsafe.head={h['punsafe']}", f"pwatermark.weights={h['pwatermark']}"]
    return ["batch_size=4"] if sets is None else sets + [f"clip.model={m['clip']}", "batch_size=4"]


@pytest.mark.parametrize("recipe", sorted(list_recipes()))
def test_every_recipe_runs_end_to_end(recipe, shard_dir, tiny_models, minilm, tmp_path):
    out = tmp_path / "out"
    args = [a for s in tiny_sets(recipe, tiny_models, minilm, tmp_path) for a in ("--set", s)]
    assert cli("run", recipe, shard_dir, "-o", out, *args, "-q") == 0
    inputs = input_samples(shard_dir)
    got, drops = read_output(out), dropped(out)
    assert set(got) | {k for k, _ in drops} == set(inputs) and len(got) + len(drops) == len(inputs)
    sm = summary(out)
    r = load_recipe(recipe)
    assert sm["strategy"] == r["mix"]["strategy"]
    if r["mix"].get("fraction") is not None:
        n_scored = len(inputs)
        assert len(got) >= int(n_scored * r["mix"]["fraction"])  # ties at the threshold may add more
    if recipe == "laion-coco":
        assert all(s.meta["recaption"]["caption_source"] == "synthetic" for s in got.values())
    ann_sm = sm["annotate"]
    assert ann_sm["samples"] == len(inputs) and ann_sm["samples_per_second"] > 0
    assert ("clip" in ann_sm["stage_seconds"]) == (r["clip"] is not None)
    assert ("caption" in ann_sm["stage_seconds"]) == (r["captioner"] is not None)
    if r.get("filters"):  # the rules' drops are counted, rule by rule
        assert sum(f["dropped"] for f in sm["filters"]) == sum(v for k, v in sm["counts"]["dropped_by_reason"].items()
                                                               if k.startswith("filter: "))


def test_recipe_errors_are_clear(tmp_path):
    with pytest.raises(RecaptionError, match="unknown recipe"):
        load_recipe("nope")
    with pytest.raises(RecaptionError, match="unknown keys"):
        load_recipe("sieve", ["colour=red"])
    with pytest.raises(RecaptionError, match="unknown mix keys"):
        load_recipe("sieve", ["mix.fractoin=0.3"])
    with pytest.raises(RecaptionError, match="must be a number"):
        load_recipe("sieve", ["mix.fraction=lots"])
    f = tmp_path / "r.yaml"
    f.write_text("captioner: null\nclip: {model: ViT-B-32}\nmix: {strategy: raw}\n")
    assert load_recipe(str(f))["mix"] == {"strategy": "raw"}


# -- kill -9 at chosen points, then resume -------------------------------------------------
KILL = textwrap.dedent("""
    import os, sys
    point, target = sys.argv[1], sys.argv[2]
    if point == "caption":
        from recaption.annotators import captions as a
        orig = a.Captions.annotate_batch
        calls = []
        def killer(self, batch):
            calls.append(batch.shard)
            if batch.shard == target and len([c for c in calls if c == target]) == 2:
                os._exit(9)  # as kill -9: no cleanup, no finally
            return orig(self, batch)
        a.Captions.annotate_batch = killer
    else:
        from recaption.io import writer
        import recaption.stages.write_mix as m
        orig = writer.write_with
        def killer(out_dir, name, fill, extra_stats=None):
            if name == target:
                def cut(tar):  # dies a few pieces into the shard, as a sample is written
                    raw, extend, n = tar.raw, tar.extend, [0]
                    def count(k):
                        n[0] += k
                        if n[0] >= 7:
                            os._exit(9)
                    tar.raw = lambda b: count(1) or raw(b)
                    tar.extend = lambda pieces, size: count(len(pieces)) or extend(pieces, size)
                    return fill(tar)
                return orig(out_dir, name, cut, extra_stats)
            return orig(out_dir, name, fill, extra_stats)
        m.write_with = killer
    from recaption.cli import main
    main(sys.argv[3:])
""")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shard_dir, tiny_models, minilm):
    out = tmp_path_factory.mktemp("full") / "out"
    args = [a for s in tiny_sets("sieve", tiny_models, minilm) for a in ("--set", s)]
    args += ["--set", "mix.samples_per_shard=5"]
    assert cli("run", "sieve", shard_dir, "-o", out, *args, "-q") == 0
    return out, args


@pytest.mark.slow
@pytest.mark.parametrize("point,target", [("caption", "00001"), ("write", "00000")])
def test_killed_run_resumes_to_the_same_output(point, target, uninterrupted, shard_dir, tmp_path):
    full, args = uninterrupted
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", KILL, point, target, "run", "sieve", str(shard_dir), "-o", str(out), *args, "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 9, p.stderr[-2000:]
    if point == "caption":
        done = sorted(x.name for x in (out / "_annotations").glob("*.parquet"))
        assert done == ["00000.parquet"]  # the killed shard left no file behind
    else:
        assert not (out / f"{target}.tar").exists()  # the shard being written left nothing behind
        assert len(list((out / "_annotations").glob("*.parquet"))) == 3
    assert cli("run", "sieve", shard_dir, "-o", out, *args, "-q") == 0
    assert tree_bytes(out) == tree_bytes(full)
    for f in sorted((full / "_annotations").glob("*.parquet")):
        a = ann.read_rows(str(f))
        b = ann.read_rows(str(out / "_annotations" / f.name))
        assert a == b
    assert not [p for p in out.rglob("*.tmp")]


@pytest.mark.slow
def test_local_and_ray_engines_write_the_same_files(shard_dir, tiny_models, minilm, tmp_path, ray_local):
    # the same command on either engine: same worker count, so the same torch threads per worker
    common = ["-c", "sieve", "--model", tiny_models["blip"], "--num-captions", 2, "--clip-model",
              tiny_models["clip"], "--sieve-model", minilm, "--batch-size", 4, "--workers", 2, "-q"]
    assert cli("annotate", shard_dir, "-o", tmp_path / "a_local", *common) == 0
    assert cli("annotate", shard_dir, "-o", tmp_path / "a_ray", "--engine", "ray", *common) == 0
    for f in sorted((tmp_path / "a_local").glob("*.parquet")):
        assert ann.read_rows(str(f)) == ann.read_rows(str(tmp_path / "a_ray" / f.name))
    mixargs = ["--strategy", "threshold", "--fraction", "0.3", "--samples-per-shard", 4, "-q"]
    assert cli("mix", shard_dir, "-a", tmp_path / "a_local", "-o", tmp_path / "m_local", *mixargs) == 0
    assert cli("mix", shard_dir, "-a", tmp_path / "a_ray", "-o", tmp_path / "m_ray", "--engine", "ray", *mixargs) == 0
    assert tree_bytes(tmp_path / "m_local") == tree_bytes(tmp_path / "m_ray")


def test_a_run_that_annotates_no_shard_names_the_first_failure(shard_dir, tmp_path, monkeypatch, capsys):
    """Every shard failing in the annotate pass stops the run there with that failure, instead of a
    mix that can only say there are no annotation files to mix."""
    from recaption import engines

    real = engines.run_stage

    def failing(stage, items, execution=None, **kw):
        if type(stage).__name__ == "AnnotateStage":
            return [{"shard": f"{i:05d}", "status": "failed", "error": "OSError: disk on fire"}
                    for i, _ in enumerate(items)]
        return real(stage, items, execution, **kw)

    monkeypatch.setattr(engines, "run_stage", failing)
    capsys.readouterr()
    assert cli("run", "datacomp-basic", shard_dir, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "no shard could be annotated: 00000: OSError: disk on fire (and 2 more shards)" in err
    assert "annotate` or `score` first" not in err
