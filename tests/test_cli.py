"""The command line as a user meets it: fast help, examples, one-line errors."""
import re
import subprocess
import sys

import pytest

from tests.helpers import choices_of, cli, commands

VERBS = ["caption", "score", "annotate", "mix", "run", "import-captions", "report", "recipes", "models", "demo"]


@pytest.mark.slow
def test_help_lists_every_verb_without_importing_heavy_modules():
    # what keeps `recaption --help` fast; its time is a figure in scripts/bench.py, not a test
    code = ("import sys; from recaption.cli import main\n"
            "try:\n main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'ray', 'vllm', 'transformers', 'pyarrow', 'numpy') "
            "if m in sys.modules), file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stderr.strip().splitlines()[-1] == "[]", p.stderr
    assert all(v in p.stdout for v in VERBS)


@pytest.mark.parametrize("verb", ["caption", "score", "annotate", "mix", "run"])
def test_each_verb_has_help_with_examples(verb, capsys):
    assert cli(verb, "--help") == 0
    out = capsys.readouterr().out
    assert "Examples" in out and f"recaption {verb}" in out


@pytest.mark.parametrize("args,msg", [
    (["annotate", "/nope/shards", "-o", "{tmp}/a"], "input not found"),
    (["caption", "{empty}", "-o", "{tmp}/a"], "no *.tar shards"),
    (["caption", "{shards}", "-o", "{tmp}/a", "-c", "no-such-preset"], "unknown captioner 'no-such-preset'"),
    (["caption", "{shards}", "-o", "{tmp}/a", "-c", "/models/missing-blip"], "model path not found"),
    (["annotate", "{shards}", "-o", "{tmp}/a", "--model", "{tmp}/nope", "--no-sieve"], "model path not found"),
    (["run", "no-such-recipe", "{shards}", "-o", "{tmp}/o"], "unknown recipe"),
    (["caption", "{shards}", "-o", "{tmp}/a", "-c", "blip-base", "--device", "cuda"], "no CUDA GPU"),
    (["mix", "{shards}", "-a", "{tmp}/a", "--strategy", "raw"], "give --out"),
    (["score", "{shards}", "-a", "{tmp}/a", "--sieve-model", "{tmp}/missing-model", "--no-clip"],
     "SIEVE model not found"),
    (["mix", "{shards}", "-a", "{tmp}/a", "--strategy", "nope", "--dry-run"], "unknown strategy 'nope'"),
])
@pytest.mark.slow
def test_errors_are_one_line(args, msg, shard_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    subs = {"{tmp}": str(tmp_path), "{shards}": str(shard_dir), "{empty}": str(tmp_path / "empty")}
    argv = [a for a in args]
    for i, a in enumerate(argv):
        for k, v in subs.items():
            a = a.replace(k, v)
        argv[i] = a
    p = subprocess.run([sys.executable, "-m", "recaption.cli", *argv], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("recaption: error")]
    assert len(lines) == 1 and msg in lines[0], p.stderr[-1500:]
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_missing_extra_names_the_install(shard_dir, tmp_path):
    p = subprocess.run([sys.executable, "-m", "recaption.cli", "caption", str(shard_dir), "-o", str(tmp_path / "a"),
                        "-c", "qwen2.5-vl-3b"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "pip install 'recaption[vllm]'" in p.stderr


def test_models_and_recipes_list(capsys, monkeypatch):
    from recaption.captioners.base import list_presets

    monkeypatch.setenv("COLUMNS", "120")
    assert cli("models") == 0
    out = capsys.readouterr().out
    assert "sieve" in out and "coca-vit-l-14" in out and "recaption[quant]" in out
    assert all(p["model"] in out for p in list_presets().values())  # no id cut or folded at 120 columns
    assert cli("models", "sieve") == 0
    assert "a picture of" in capsys.readouterr().out
    assert cli("recipes") == 0
    out = capsys.readouterr().out
    assert all(r in out for r in ("sieve", "nguyen-blip2", "laion-coco", "datacomp-clip"))


@pytest.mark.slow
def test_log_file_before_or_after_the_verb(shard_dir, tiny_models, tmp_path):
    for where in ("before", "after"):
        log = tmp_path / f"{where}.log"
        args = ["score", str(shard_dir / "00000.tar"), "-a", str(tmp_path / where), "--clip-model", tiny_models["clip"],
                "--no-sieve"]
        argv = ["--log-file", str(log), *args] if where == "before" else [*args, "--log-file", str(log)]
        p = subprocess.run([sys.executable, "-m", "recaption.cli", *argv], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-1500:]
        assert "score: 6/6 samples (100%)" in log.read_text()  # the progress line, off a terminal


def test_every_option_of_every_verb_is_in_the_readme():
    """What `--help` shows, README.md documents (options built from the annotators' and engines'
    declarations included)."""
    from pathlib import Path

    import typer

    from recaption.cli import app
    from recaption.cli.options import refresh

    refresh()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    group = typer.main.get_command(app)
    missing, seen = [], 0
    for name, cmd in group.commands.items():
        for p in cmd.params:
            for flag in [o for o in p.opts + p.secondary_opts if o.startswith("--") and o != "--help"]:
                seen += 1
                if flag not in readme:
                    missing.append(f"{name} {flag}")
    assert seen > 50 and not missing, missing


BOX = set("─│┌┐└┘├┤┬┴┼━┃┏┓┗┛┡┩╇╭╮╰╯")


def test_a_folder_given_as_clip_model_is_one_line_before_any_shard(shard_dir, tmp_path, tiny_models, capsys):
    folder = tiny_models["clip"].split(":", 1)[1]  # the open_clip folder, without its local-dir: prefix
    a = tmp_path / "a"
    assert cli("score", shard_dir, "-a", a, "--clip-model", folder, "--no-sieve", "-q") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"recaption: error: CLIP model '{folder}' is a folder, not an open_clip name; "
                   f"did you mean local-dir:{folder}?"]
    assert not a.exists()  # said before any shard was read or any folder made
    assert cli("score", shard_dir, "-a", a, "--clip-model", "ViT-B-3", "--no-sieve", "-q") == 2
    assert "did you mean ViT-B-32" in capsys.readouterr().err


def test_import_captions_matching_no_key_names_both_sides(shard_dir, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers import input_samples

    uids = [s.meta["uid"] for s in input_samples(shard_dir).values()]
    pq.write_table(pa.table({"key": ["0", "1"], "uid": uids[:2], "caption": ["a", "b"]}), tmp_path / "c.parquet")
    a = tmp_path / "a"
    assert cli("import-captions", shard_dir, "--captions", tmp_path / "c.parquet", "-o", a, "-q") == 2  # by key
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--key-column key" in err[0] and "'000000000'" in err[0] and "'0'" in err[0]
    assert not a.exists()  # said before anything was written
    assert cli("import-captions", shard_dir, "--captions", tmp_path / "c.parquet", "-o", a, "-q",
               "--key-column", "uid") == 0


def _readme_examples(start: str) -> list[tuple[str, str]]:
    """(command, the line it prints) of README.md's examples: `$ recaption ...` then its output line."""
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8").splitlines()
    return [(a.strip()[2:], b.strip()) for a, b in zip(lines, lines[1:])
            if a.strip().startswith("$ recaption ") and b.strip().startswith(start)]


def test_readme_error_examples_are_what_the_cli_prints(shard_dir, tmp_path, capsys):
    """Every `recaption: error:` line README shows after a command is what that command prints (its
    placeholders made real; quoted values such as keys may differ)."""
    import re
    import shlex

    (tmp_path / "models" / "my-clip").mkdir(parents=True)
    (tmp_path / "caps.csv").write_text("key,caption\n0,a red square\n1,a blue circle\n")
    real = {"shards/": f"{shard_dir}/", "ann/": f"{tmp_path}/ann/", "/models/": f"{tmp_path}/models/",
            "caps.csv": f"{tmp_path}/caps.csv"}

    def made_real(text):
        for k, v in real.items():
            text = text.replace(k, v)
        return text

    examples = _readme_examples("recaption: error:")
    assert len(examples) >= 2
    for command, expected in examples:
        assert cli(*shlex.split(made_real(command))[1:], "-q") == 2, command
        got = capsys.readouterr().err.strip()
        pattern = re.sub(r"'[^']*'", "'[^']*'", re.escape(made_real(expected)))
        assert re.fullmatch(pattern, got), (command, got)


def test_readme_import_example_matches(tmp_path, capsys):
    """README's own import-captions example (the sample shards, one caption by key) matches a sample."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text(encoding="utf-8")
    csv = next(ln for ln in text.splitlines() if ln.startswith("printf 'key,caption"))
    (tmp_path / "caps.csv").write_text(csv.split("'")[1].replace("\\n", "\n"))
    assert "recaption import-captions $S --captions $W/caps.csv -o $W/imported" in text
    assert cli("import-captions", root / "recaption/data/sample-shards", "--captions", tmp_path / "caps.csv",
               "-o", tmp_path / "imported", "--json") == 0
    assert '"matched": 1' in capsys.readouterr().out


def test_tables_read_at_80_columns_and_piped(tmp_path, capsys, monkeypatch):
    """Piped (capsys) at 80 columns: no box art, no cell cut short (no `…`), every threshold in full,
    the presets' `needs` column there; flags in --help show no type."""
    import json

    from recaption.captioners.base import BACKENDS, list_presets
    from recaption.demo.samples import make_shards
    from recaption.mixing import STRATEGIES
    from tests.helpers import annotate_randomly

    monkeypatch.setenv("COLUMNS", "80")
    make_shards(tmp_path / "s", n_shards=2, per_shard=20, seed=3)
    annotate_randomly(tmp_path / "s", tmp_path / "a")
    args = ("mix", tmp_path / "s", "-a", tmp_path / "a", "--strategy", "sieve", "--fraction", "0.3", "--dry-run")
    assert cli(*args, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert cli(*args) == 0
    out = capsys.readouterr().out
    assert not BOX & set(out) and "…" not in out
    assert all(len(ln) <= 80 for ln in out.splitlines() if not ln.startswith("    cut by"))
    from recaption.cli.render import _num

    for row in summary["strategies"]:
        assert row["strategy"] in out
        if row.get("threshold") is not None:
            assert f"{_num(row['threshold'])} on {row['threshold_column']}" in out
    assert set(STRATEGIES) <= {r["strategy"].split()[0] for r in summary["strategies"]}
    assert cli("models") == 0
    out = capsys.readouterr().out
    assert not BOX & set(out) and "…" not in out
    vllm = [n for n, p in list_presets().items() if BACKENDS.get(p["backend"]).requires == (("vllm", "vllm"),)]
    assert vllm and out.count("recaption[vllm], GPU") == len(vllm)
    assert all(p["model"] in out for p in list_presets().values())
    assert cli("recipes") == 0
    assert not BOX & set(capsys.readouterr().out)
    for verb in VERBS:
        assert cli(verb, "--help") == 0
        assert "<bool>" not in capsys.readouterr().out, verb


# -- a name the command line does not know ---------------------------------------------------------
ONE_FORM = re.compile(r"recaption: error: unknown (?P<what>.+?) '(?P<name>[^']*)'"
                      r"(?:; did you mean (?P<near>.+?)\?)? \(known: (?P<known>.+?)\)(?P<extra>.*)")


def _near_miss(name: str, known: list[str]) -> str:
    """A misspelling of `name` that is none of the known names."""
    return next(t for t in (name[:-1], name + "x", "x" + name) if len(t) > 1 and t not in known)


def _required(cmd, where) -> list[str]:
    """Values for what a verb requires (its arguments, `--out`...), all under `where`."""
    args = []
    for p in cmd.params:
        if p.required and p.param_type_name == "argument":
            args.append(str(where / p.name))
        elif p.required:
            args += [next(o for o in p.opts if o.startswith("--")), str(where / p.name)]
    return args


def test_every_choice_option_names_the_nearest_choices(tmp_path, capsys):
    """Every option of every verb whose value is a registry's name or one of a fixed list (found by
    walking the built command line): a misspelt value is the project's one error line, `unknown X
    'n'; did you mean ...? (known: ...)`, exit 2, and nothing is created (typer said "Invalid value
    for '--strategy': 'thresold' is not one of ..." with no suggestion)."""
    walked, wrong = set(), []
    for verb, cmd in commands().items():
        for p in cmd.params:
            known = choices_of(p)
            if not known:
                continue
            walked.add(p.name)
            flag = next(o for o in p.opts if o.startswith("--"))
            for name in known:
                where = tmp_path / f"{verb}-{p.name}-{name}"
                typo = _near_miss(name, known)
                capsys.readouterr()
                rc = cli(verb, *_required(cmd, where), flag, typo)
                err = capsys.readouterr().err.strip().splitlines()
                m = ONE_FORM.fullmatch(err[-1]) if err else None
                named = m and m["name"] == typo and name in (m["near"] or "").split(" or ")
                if not (rc == 2 and len(err) == 1 and named and m["known"].split(", ") == known and not where.exists()):
                    wrong.append(f"recaption {verb} {flag} {typo}: exit {rc}, {err}")
    assert {"strategy", "caption_keys", "engine", "backend", "decoding", "dtype", "preprocess"} <= walked  # seen
    assert not wrong, "\n".join(wrong)


MIX = ["mix", "{shards}", "-a", "{shards}", "-o", "{out}"]


@pytest.mark.parametrize("args,near", [
    (["run", "sievee", "{shards}", "-o", "{out}"], "sieve"),
    (["recipes", "sievee"], "sieve"),
    (["models", "blip-bse"], "blip-base"),
    (["caption", "{shards}", "-o", "{out}", "-c", "blip-bse"], "blip-base"),
    (["caption", "{shards}", "-o", "{out}", "--backend", "vlm", "--template", "captio"], "caption"),
    (["score", "{shards}", "-a", "{out}", "--mask", "sieve-lng", "--no-clip"], "sieve-long"),
    (["score", "{shards}", "-a", "{out}", "--clip-model", "ViT-B-3", "--no-sieve"], "ViT-B-32"),
    ([*MIX, "--dedup", "exakt"], "exact"),
    ([*MIX, "--decontaminate", "{shards}", "--decontaminate-rule", "exakt"], "exact"),
    ([*MIX, "--dedup", "exact", "--dedup-keep", "best:clip_rw"], "clip_raw"),
    ([*MIX, "--filter", "basik"], "basic"),
])
def test_every_name_taking_value_names_the_nearest_names(args, near, shard_dir, tmp_path, capsys):
    """Names that are not choices (a recipe or a preset may also be a file, a captioner a model id):
    a misspelt one is the same one line, before anything is created (the recipe, the preset, the
    captioner, the template and the rules each said it their own way, without a suggestion; the
    mask was not checked until the models had loaded)."""
    out = tmp_path / "out"
    argv = [str(a).replace("{shards}", str(shard_dir)).replace("{out}", str(out)) for a in args]
    assert cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    m = ONE_FORM.fullmatch(err[-1])
    assert len(err) == 1 and m and near in m["near"].split(" or "), err
    assert not out.exists()


def test_decontaminate_model_is_checked_with_the_config(shard_dir):
    """MixConfig.validate names an unknown --decontaminate-model (or its pretrained tag) up front;
    it used to fail after the pool pass, when the evaluation set's embedder was built."""
    from recaption.errors import RecaptionError
    from recaption.mixing.strategies import MixConfig

    def cfg(model):
        return MixConfig(strategy="raw", decontaminate=str(shard_dir), decontaminate_rules=["embedding=0.9"],
                         decontaminate_model=model)

    with pytest.raises(RecaptionError) as e:
        cfg("ViT-B-3").validate()
    m = ONE_FORM.fullmatch(f"recaption: error: {e.value}")
    assert m and m["what"] == "--decontaminate-model" and "ViT-B-32" in m["near"].split(" or ")
    with pytest.raises(RecaptionError, match="unknown --decontaminate-model pretrained tag of ViT-B-32 'opena'; "
                                             "did you mean openai\\?"):
        cfg("ViT-B-32@opena").validate()
    for fine in ("ViT-B-32", "ViT-B-32@openai", "hf-hub:org/repo"):
        assert cfg(fine).validate().decontaminate_model == fine


# -- the summary's reasons -------------------------------------------------------------------------
def test_reasons_keep_their_words_and_mark_their_numbers():
    """A reason's category is the reason with each standalone number as `#`: digits inside a word
    stay (they once vanished: `utf-8` became `utf-`, a WxH size `x`)."""
    from recaption.errors import reason_category

    assert reason_category("decode: image is 4000x3000 = 12000000 pixels, over the limit of 10000") == \
        "decode: image is #x# = # pixels, over the limit of #"
    assert reason_category("member '000123.jpg' holds 5 of its 10 bytes") == "member '#.jpg' holds # of its # bytes"
    assert reason_category("not utf-8 text (jpeg2000, ViT-B-32, 10MB)") == "not utf-8 text (jpeg2000, ViT-B-32, 10MB)"
    assert reason_category("score -0.5 below 1e-5") == "score # below #"
    # reasons that differ in their numbers only are one category; in their words, two
    assert reason_category("json nests deeper than 20") == reason_category("json nests deeper than 500")
    assert reason_category("cannot decode image (OSError: truncated)") != \
        reason_category("cannot decode image (UnidentifiedImageError: not an image)")


def test_the_summarys_reason_counts_add_up_to_its_errors():
    """Every shard's reasons are counted (each shard once kept its five commonest, and the summary
    its five commonest of those): the ten commonest, then the rest as `other reasons`."""
    from recaption.api import OTHER_REASONS, summarise

    reports = [{"shard": f"{i:05d}", "status": "done", "samples": 20, "errors": 12,
                "reasons": {f"reason {chr(97 + j)}": 1 for j in range(i, i + 12)}} for i in range(3)]
    s = summarise(reports, 1.0)
    assert s["errors"] == 36 and sum(s["error_reasons"].values()) == 36
    # reasons c to l are in every shard (3 each); a, b, m and n in one or two (6 in all)
    assert s["error_reasons"] == {**{f"reason {c}": 3 for c in "cdefghijkl"}, OTHER_REASONS: 6}


def test_the_summary_shows_each_reason_with_its_numbers_marked(shard_dir, tiny_models, tmp_path, capsys):
    import json

    def score(ann):
        return cli("score", shard_dir, "-a", ann, "--clip-model", tiny_models["clip"], "--no-sieve",
                   "--max-pixels", 1000, "-q", *more)

    more = ["--json"]
    assert score(tmp_path / "a") == 1  # every sample fails, each image its own size
    s = json.loads(capsys.readouterr().out)
    said = "decode: image is #x# = # pixels, over the limit of #"
    assert s["errors"] > 1 and s["error_reasons"] == {said: s["errors"]}
    more = []
    assert score(tmp_path / "b") == 1
    out = capsys.readouterr().out
    assert f"{said}  " in out or f"{said}: " in out  # its row, with its count


@pytest.mark.slow
def test_python_dash_m_recaption_is_the_command_line(tmp_path):
    """`python -m recaption` runs the console script (there was no recaption/__main__.py: only
    `python -m recaption.cli` worked); tests/test_packaging.py runs it from an installed wheel."""
    p = subprocess.run([sys.executable, "-m", "recaption", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and all(v in p.stdout for v in VERBS), p.stderr[-2000:]
    p = subprocess.run([sys.executable, "-m", "recaption", "mix", str(tmp_path), "-a", str(tmp_path / "a"),
                        "--strategy", "thresold"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("recaption: error: unknown strategy 'thresold'; did you mean")
