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
    demo = subprocess.run([sys.executable, "-m", "recaption.cli", "demo", "--out", str(work / "out"), "-q"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "samples read" in demo.stdout and list((work / "out").glob("*.tar"))
