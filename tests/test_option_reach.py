"""Issue 33.3: every option reaches its effect. For every option of every verb (read from the built
command line, so an option added to any verb, annotator or engine is walked too), the verb is run
once as it is and once with that option changed; what the stage receives (its spec, its items, the
engine settings, the storage options in force), the settings recorded in the folders and what is
printed must differ, or the verb must refuse the option in one line (exit 2). Stages are not run:
the engine's `run_stage` records what it is handed and answers as if the work were done, so no
model is built (`run` computes the filter metrics for real: its mix reads them)."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import typer

from recaption import engines
from recaption.cli import app
from recaption.cli.options import refresh
from tests import helpers
from tests.helpers import annotate_randomly, cli

GLOBAL = {"debug", "log_file"}  # the logging options of every verb: test_global_options_reach_the_log

NUMBER = r"\d[\d,]*(\.\d+)?"  # a printed number, timings and rates: a rate past 999 prints as 1,234


def commands() -> dict:
    """Every verb as the command line builds it now."""
    refresh()
    return dict(typer.main.get_command(app).commands)


def options(name: str) -> list:
    """The options a verb shows, global ones aside (typer's own click classes: compared by kind)."""
    return [p for p in commands()[name].params if p.param_type_name == "option" and p.name not in GLOBAL]


class Probe:
    """Stands in for `recaption.engines.run_stage`: records what each stage is handed."""

    def __init__(self, real):
        self.real, self.calls, self.passthrough = real, [], False

    def __call__(self, stage, items, execution=None, **kw):
        from recaption.io import fs

        spec = getattr(stage, "spec", None)
        self.calls.append(repr((type(stage).__name__, spec, items, execution, kw.get("cpu_only"),
                                fs.get_options())))
        if self.passthrough and type(stage).__name__ == "AnnotateStage":  # in this process, whatever the engine
            import dataclasses

            local = dataclasses.replace(execution or engines.Execution(), engine="local", options={}, workers=None)
            return self.real(stage, items, local, **kw)
        return [{"shard": str(it), "status": "done", "samples": 0} for it in items]


@pytest.fixture
def world(tmp_path_factory, shard_dir, monkeypatch):
    """Shards, an annotation folder to mix, a recipe, a caption file, and the probe in place."""
    root = tmp_path_factory.mktemp("reach")
    ann = annotate_randomly(shard_dir, root / "mixann")
    recipe = root / "recipe.yaml"
    # no model: the filter metrics are what `run` computes, and its mix needs no CLIP score
    recipe.write_text("captioner: null\nclip: null\nsieve: null\nfilters: {min-chars: 1}\nmix: {strategy: raw}\n")
    caps = root / "caps.csv"
    caps.write_text("key,caption\n" + "".join(f"{k},cap {k}\n" for k in _keys(shard_dir)))
    caps2 = root / "caps2.csv"
    caps2.write_text("key,caption\n" + "".join(f"{k},other {k}\n" for k in _keys(shard_dir)))
    lang = root / "lid.bin"
    lang.write_bytes(b"not read: the stage never runs")
    probe = Probe(engines.run_stage)
    monkeypatch.setattr(engines, "run_stage", probe)
    monkeypatch.setattr(helpers, "VERIFY_AFTER", False)  # stages answer without writing: nothing to verify
    monkeypatch.setattr("recaption.api.preflight", lambda ex, cpu_only=False: None)  # no Ray cluster here
    monkeypatch.setattr(engines, "mapper", lambda ex=None: engines.engine("local").mapper(ex or engines.Execution()))
    return {"root": root, "shards": shard_dir, "ann": ann, "recipe": recipe, "caps": caps, "caps2": caps2, "lang": lang,
            "probe": probe}


def _keys(shard_dir):
    from recaption.io.shards import iter_shard

    return [r.key for t in sorted(shard_dir.glob("*.tar")) for r in iter_shard(str(t))]


def baseline(verb: str, w: dict) -> list:
    """A command line of `verb` that runs to its stages."""
    r, s = w["root"], w["shards"]
    return {
        "caption": ["caption", s, "-o", r / "out"],
        "score": ["score", s, "-a", r / "out"],
        "annotate": ["annotate", s, "-o", r / "out"],
        "mix": ["mix", s, "-a", w["ann"], "-o", r / "out", "--strategy", "raw"],
        "run": ["run", w["recipe"], s, "-o", r / "out"],
        "import-captions": ["import-captions", s, "--captions", w["caps"], "-o", r / "out"],
        "report": ["report", w["ann"], "-o", r / "out"],
        "demo": ["demo", "-o", r / "out", "-q"],
    }[verb]


def variants(opt, verb: str, w: dict) -> list[list]:
    """The option given values other than its default (flags: given; choices: each other one)."""
    flag = next(o for o in opt.opts if o.startswith("--"))
    if opt.is_flag:
        return [[flag]]
    choices = _choices(opt)
    if choices:
        default = getattr(opt.default, "value", opt.default)
        return [[flag, c] for c in choices if c != default]
    r = w["root"]
    values = {  # option name -> a valid value other than the default (and other than what presets set)
        "captioner": {"import-captions": "someone-else"}.get(verb, "blip-large" if verb != "annotate" else "blip-base"),
        "model": "Salesforce/blip-image-captioning-large", "num_captions": 2, "num_beams": 2, "top_p": 0.77,
        "top_k": 5, "temperature": 0.5, "max_new_tokens": 5, "min_new_tokens": 2, "repetition_penalty": 1.5,
        "seed": 3, "prompt": "a photo of", "template": "caption", "lang_model": w["lang"], "clip_model": "RN50",
        "clip_pretrained": "yfcc15m", "sieve_model": w["lang"], "mask": "sieve-long", "rerank": "RN50@openai=1",
        "image_keys": "png,jpg", "max_pixels": 10_000, "max_member_bytes": 1 << 20, "max_json_bytes": 1 << 16,
        "max_json_depth": 20, "max_json_int_digits": 100, "batch_size": 3, "device": "cpu", "workers": 2,
        "threads": 1, "ray_address": "auto", "actor_cpus": 1.0, "actor_gpus": 1.0,
        "storage_options": '{"s3": {"anon": true}}', "out": r / "elsewhere", "annotations": r / "elsewhere-ann",
        "threshold": 0.25, "fraction": 0.5, "alpha": 0.25, "samples_per_shard": 4, "filters": "min-chars=10",
        "dedup": "exact", "dedup_keep": "best:clip_raw", "decontaminate": w["shards"],
        "decontaminate_rule": "exact", "decontaminate_model": "ViT-B-32@openai", "set": "mix.strategy=both",
        "key_column": "uid", "caption_column": "text", "input": w["shards"], "captions": w["caps2"],
        # the LAION tags' heads: another head, or weights (not a state dict here: refused in one line)
        "punsafe_head": "laion-nsfw-vit-b-32", "aesthetic_head": "laion-aesthetic-v1-vit-l-14",
        "punsafe_weights": w["lang"], "aesthetic_weights": w["lang"], "pwatermark_weights": w["lang"],
        "group": "long=blip-large", "synthetic_group": "long", "clean_floor": 0.2,
        "json_tags": "punsafe",  # the world's annotations hold no tag: refused in one line
    }
    assert opt.name in values, f"{verb} --{opt.name}: give the option-reach test a value for it"
    return [[flag, values[opt.name]]]


def _choices(opt) -> list[str]:
    """The values a choice option takes (typer keeps its Enum on the parameter's type descriptor)."""
    import enum
    import typing

    t = opt.type_descriptor.annotation
    while typing.get_args(t) and not (isinstance(t, type) and issubclass(t, enum.Enum)):
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return [m.value for m in t] if isinstance(t, type) and issubclass(t, enum.Enum) else []


def outcome(args: list, w: dict, capsys, clean: bool = True) -> tuple[int, str]:
    """(exit status, everything the run handed its stages, recorded and printed)."""
    for d in ("out", "elsewhere", "elsewhere-ann") if clean else ():
        shutil.rmtree(w["root"] / d, ignore_errors=True)
    w["probe"].calls.clear()
    capsys.readouterr()
    rc = cli(*args)
    printed = capsys.readouterr()
    records = {str(p.relative_to(w["root"])): json.loads(p.read_text())
               for p in sorted(w["root"].glob("*/**/_recaption.json"))}
    for rec in records.values():  # when, and by which process: not settings
        for k in ("created", "updated", "pid", "host", "time"):
            rec.pop(k, None)
    text = steady_text(printed.out)
    w["records"] = json.dumps(records, default=str, sort_keys=True)
    return rc, json.dumps([w["probe"].calls, records, text], default=str, sort_keys=True) + "\n" + printed.err


VERBS = ["caption", "score", "annotate", "mix", "run", "import-captions"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_option_changes_what_the_stage_gets_or_is_refused(verb, world, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    world["probe"].passthrough = verb == "run"
    base = baseline(verb, world)
    rc0, fp0 = outcome(base, world, capsys)
    assert rc0 == 0, fp0
    records0 = world["records"]
    silent, seen, accepted = [], {}, []
    walked = options(verb)
    assert {"overwrite", "quiet", "json", "storage_options"} <= {o.name for o in walked}  # the walk sees them
    for opt in walked:
        if opt.name == "overwrite":
            continue  # what it changes is a folder written with other settings: below
        results = []
        for v in variants(opt, verb, world):
            results.append(outcome(base + v, world, capsys))
            if results[-1][0] == 0 and world["records"] != records0 and opt.name not in ("out", "annotations"):
                accepted.append(v)  # a setting the folders record: what --overwrite is tried over
        for rc, fp in results:
            assert rc in (0, 2), (opt.name, fp[-2000:])
            if rc == 2:  # refused: one error line naming what is wrong
                errors = [ln for ln in fp.splitlines() if ln.startswith("recaption: error:")]
                assert len(errors) == 1, (opt.name, fp[-2000:])
        changes = [fp != fp0 for rc, fp in results if rc == 0]
        seen[opt.name] = "changed" if any(changes) else "refused" if not changes else "silent"
        if changes and not any(changes) and len(changes) == len(results):  # none refused, none changed
            silent.append(opt.name)
    # --overwrite: over a folder another setting wrote, the plain command is refused and it is not
    other = accepted[0]
    assert outcome(base + other, world, capsys)[0] == 0
    rc_plain, fp_plain = outcome(base, world, capsys, clean=False)
    outcome(base + other, world, capsys)
    rc_over, fp_over = outcome(base + ["--overwrite"], world, capsys, clean=False)
    seen["overwrite"] = (other, rc_plain, rc_over)
    if not (rc_plain == 2 and rc_over == 0) and fp_plain == fp_over:
        silent.append("overwrite")
    assert not silent, (f"{verb}: these options are shown, accepted and change nothing: {silent}\n"
                        + json.dumps(seen, indent=0, default=str))


def test_every_verb_is_walked():
    """A verb that runs stages is in VERBS; one that runs none but shows options is in OTHERS
    (report, verify, demo); the listings (recipes, models) show none."""
    staged = {"caption", "score", "annotate", "mix", "run", "import-captions"}
    assert set(commands()) - staged == {"report", "recipes", "models", "demo", "verify"}
    assert set(VERBS) == staged
    others = {getattr(v, "values", [v])[0] for v in OTHERS}
    assert {v for v in set(commands()) - staged if options(v)} == others


def test_mix_takes_no_input_option_it_would_ignore():
    """mix decodes no image: --image-keys, --preprocess, --gpu-decode and --max-pixels are not its options."""
    shown = {o.name for o in options("mix")}
    assert not shown & {"image_keys", "preprocess", "gpu_decode", "max_pixels"}
    assert cli("mix", "x", "-a", "y", "--image-keys", "nonexistent", "--dry-run") == 2


def test_run_hands_its_input_options_to_annotate(world, capsys):
    """`run --preprocess exact --gpu-decode --image-keys png` once reached annotate as fast/False/defaults."""
    world["probe"].passthrough = False
    rc, _ = outcome(baseline("run", world) + ["--preprocess", "exact", "--gpu-decode", "--image-keys", "png"],
                    world, capsys)
    (call,) = [c for c in world["probe"].calls if c.startswith("('AnnotateStage'")]
    assert "preprocess='exact'" in call and "gpu_decode=True" in call and "image_keys=('png',)" in call


def test_global_options_reach_the_log(world, tmp_path, capsys):
    import logging

    from recaption.cli.options import STATE, setup_logging

    log = tmp_path / "log.txt"
    assert cli("mix", world["shards"], "-a", world["ann"], "--strategy", "raw", "--dry-run", "--debug",
               "--log-file", log) == 0
    assert STATE["debug"] and logging.getLogger("recaption").level == logging.DEBUG
    logging.getLogger("recaption.probe").debug("a debug line")
    assert log.is_file() and "a debug line" in log.read_text()
    STATE.update(debug=False, log_file=None)
    setup_logging()


def test_every_api_parameter_is_read():
    """The API's side of the walk: each parameter of a verb's function is read in its body (mix
    once took `image_keys` and never read it). What it changes, the CLI walk above checks."""
    import ast
    import inspect

    from recaption import api

    unread = []
    for name in ("annotate", "mix", "run", "import_captions", "report"):
        fn = inspect.unwrap(getattr(api, name))
        tree = ast.parse(inspect.getsource(fn).lstrip())
        body = tree.body[0]
        read = {n.id for stmt in body.body for n in ast.walk(stmt) if isinstance(n, ast.Name)}
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD]
        # storage_options is read by the @scoped wrapper (recaption.io.fs.scoped), before the body
        unread += [f"api.{name}({p.name})" for p in params if p.name not in read and p.name != "storage_options"]
    assert not unread, unread


# -- the verbs that run no stage: report, verify, demo ---------------------------------------------
# demo runs its tiny models (~100 s for its four runs); report renders 14 pages (~15 s): both outside
# make test-fast's 120 s
OTHERS = [pytest.param("report", marks=pytest.mark.slow), "verify", pytest.param("demo", marks=pytest.mark.slow)]


def other_baselines(verb: str, w: dict) -> list[list]:
    """Command lines of a verb that runs no stage, one per kind of folder it reads."""
    r = w["root"]
    return {
        "report": [["report", w["ann"], "-o", r / "out"], ["report", w["mixed"], "-o", r / "out"]],
        "verify": [["verify", w["imported"]], ["verify", w["mixed"]]],
        "demo": [["demo", "-o", r / "out"]],
    }[verb]


def steady(fp: str) -> str:
    """An outcome with the numbers of its log lines (rates, times) as #; what was handed, recorded
    and printed keeps them (outcome's first line)."""
    handed, _, err = fp.partition("\n")
    return handed + "\n" + steady_text(err)


def steady_text(text: str) -> str:
    """Printed text with what varies run to run taken out: numbers (timings, rates) as #, the
    padding a table sizes to them, and the progress lines printed every 30 s before the last
    (how many depends on the machine's load)."""
    text = "\n".join(ln for ln in text.splitlines() if ", ETA " not in ln or "(100%)" in ln)
    return re.sub(r" +", " ", re.sub(NUMBER, "#", text))


def written(w: dict) -> dict:
    """What the run wrote (a report's page and plots, a demo's shards): path -> its bytes' digest,
    text with its numbers as # (timings)."""
    import hashlib

    got = {}
    for d in ("out", "elsewhere"):
        for p in sorted((w["root"] / d).rglob("*")) if (w["root"] / d).is_dir() else ():
            if p.is_file():
                data = p.read_bytes()
                if p.suffix in (".html", ".json"):
                    data = re.sub(NUMBER.encode(), b"#", data)
                got[str(p.relative_to(w["root"]))] = hashlib.sha256(data).hexdigest()
    return got


@pytest.mark.parametrize("verb", OTHERS)
def test_every_option_of_the_other_verbs_changes_what_happens_or_is_refused(verb, world, capsys, monkeypatch):
    """report, verify and demo hand no stage anything: what they write (the page, its plots, the
    shards), what verify is asked to check (folder, shards, storage options in force) and what is
    printed must differ with each option changed, or the option is refused in one line."""
    import recaption.mixing.verify as verifying
    from recaption.io import fs

    monkeypatch.setenv("COLUMNS", "200")
    real_check = verifying.verify

    def check(folder, shards=None):
        world["probe"].calls.append(repr(("verify", str(folder), shards, fs.get_options())))
        return real_check(folder, shards)

    monkeypatch.setattr(verifying, "verify", check)
    world["probe"].passthrough = True  # the demo's annotate runs (tiny models); report and verify run none
    if "mixed" not in world:
        monkeypatch.setattr(engines, "run_stage", world["probe"].real)  # a real mix to read
        assert cli("mix", world["shards"], "-a", world["ann"], "-o", world["root"] / "mixed", "--strategy", "raw",
                   "-q") == 0
        world["imported"] = world["root"] / "imported"  # an annotation folder with its record, for verify
        assert cli("import-captions", world["shards"], "--captions", world["caps"], "-o", world["imported"], "-q") == 0
        monkeypatch.setattr(engines, "run_stage", world["probe"])
        world["mixed"] = world["root"] / "mixed"
        from recaption.demo.samples import make_shards

        world["other_shards"] = world["root"] / "other-shards"  # the same names and keys, other images
        make_shards(world["other_shards"], n_shards=3, per_shard=6, seed=2)
    walked = options(verb)
    assert walked, verb
    silent = []
    for base in other_baselines(verb, world):
        rc0, fp0 = outcome(base, world, capsys)
        fp0 = steady(fp0) + json.dumps(written(world))
        assert rc0 == 0, fp0[-2000:]
        again = outcome(base, world, capsys)  # the same command: the same fingerprint, or no test
        assert steady(again[1]) + json.dumps(written(world)) == fp0, "not deterministic: the comparison means nothing"
        for opt in walked:
            for v in variants(opt, verb, world):
                if base[1] == world["mixed"] and v[0] == "--input":  # its mix's own input, recorded: other images
                    v = [v[0], world["other_shards"]]
                rc, fp = outcome(base + v, world, capsys)
                fp = steady(fp) + json.dumps(written(world))
                assert rc in (0, 2), (base, opt.name, fp[-2000:])
                if rc == 2:
                    errors = [ln for ln in fp.splitlines() if ln.startswith("recaption: error:")]
                    assert len(errors) == 1, (base, opt.name, fp[-2000:])
                elif fp == fp0:
                    silent.append(f"{' '.join(map(str, base))} {' '.join(map(str, v))}")
    assert not silent, f"{verb}: these options are shown, accepted and change nothing:\n" + "\n".join(silent)
