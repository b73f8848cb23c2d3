"""The command line as a user meets it: fast help, examples, one-line errors."""
import subprocess
import sys

import pytest

from tests.helpers import cli

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
    (["mix", "{shards}", "-a", "{tmp}/a", "--strategy", "nope", "--dry-run"], "Invalid value for '--strategy'"),
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
