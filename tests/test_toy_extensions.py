"""Issue 33.5: an extension written as recaption/ARCHITECTURE.md's how-to says works everywhere a
built-in does. A toy of each kind (annotator: tests/annotators/brightness.py; a strategy cutting
on its score: tests/toys/bright.py; captioner backend: tests/toys/echo.py; engine:
tests/engines/serial.py) is used through the command line, registered the way a built-in is (its
"module:Name" line in the registry, `builtin=True`) and as a plugin (entry points of an installed
distribution, read from its metadata)."""
from __future__ import annotations

import contextlib
import io
import json
import sys

import pyarrow.parquet as pq
import pytest
from PIL import Image

from recaption import annotators, engines, mixing
from recaption.captioners.base import BACKENDS
from recaption.demo.samples import write_tar
from recaption.mixing.rules import RULE_KINDS
from tests.helpers import cli

TOYS = {  # registry -> (name, "module:Name"): each toy as its one registration line names it
    "annotator": (annotators.REGISTRY, "brightness", "tests.annotators.brightness:Brightness", "recaption.annotators"),
    "strategy": (mixing.STRATEGIES, "bright", "tests.toys.bright:Bright", "recaption.strategies"),
    "captioner backend": (BACKENDS, "echo", "tests.toys.echo:ECHO", "recaption.captioners"),
    "engine": (engines.ENGINES, "serial", "tests.engines.serial", "recaption.engines"),
}


def test_a_toy_of_every_kind_of_registry():
    """Every registry (tests/test_registry.py lists them from the package) has its toy here."""
    from tests.test_registry import registries

    kinds = {r.kind for r in registries().values()} - {RULE_KINDS.kind}  # rule kinds come with annotators
    assert kinds == set(TOYS)


@contextlib.contextmanager
def registered(how: str, tmp_path):
    """The four toys known to every registry, the way `how` says; all undone afterwards."""
    with contextlib.ExitStack() as stack:
        for reg, *_ in TOYS.values():
            stack.enter_context(reg.saved())
        stack.enter_context(RULE_KINDS.saved())
        if how == "built in":
            for reg, name, target, _ in TOYS.values():
                reg.register(name, target, builtin=True)
        else:  # an installed distribution declaring them as entry points
            site = tmp_path / "site"
            dist = site / "recaption_toys-0.1.dist-info"
            dist.mkdir(parents=True)
            (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: recaption-toys\nVersion: 0.1\n")
            (dist / "entry_points.txt").write_text("".join(f"[{group}]\n{name} = {target}\n\n"
                                                           for _, name, target, group in TOYS.values()))
            sys.path.insert(0, str(site))
            stack.callback(sys.path.remove, str(site))
            for reg, *_ in TOYS.values():
                reg.read_plugins()
        yield


def _jpeg(level: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (level, level, level)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path):
    levels = {"dark": 10, "mid": 128, "light": 245}
    samples = [(k, {"jpg": _jpeg(v), "txt": f"a {k} picture".encode()}) for k, v in levels.items()]
    write_tar(tmp_path / "in" / "00000.tar", samples)
    return tmp_path / "in"


@pytest.mark.parametrize("how", ["built in", "plugin"])
def test_the_four_toys_work_through_the_cli(how, shards, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    ann, out = tmp_path / "ann", tmp_path / "out"
    with registered(how, tmp_path):
        assert cli("mix", "--help") == 0
        shown = " ".join(capsys.readouterr().out.replace("│", " ").split())
        assert "bright: the alt-text where the image's mean" in shown and "serial" in shown

        # the backend serves `echo:` ids (guess_backend asked it), on the toy engine
        assert cli("caption", shards, "-o", ann, "-c", "echo:toy", "--engine", "serial", "--serial-reverse",
                   "-q") == 0
        # the annotator's option and column, on the same engine
        assert cli("score", shards, "-a", ann, "--no-clip", "--no-sieve", "--brightness", "--engine", "serial",
                   "-q") == 0
        rows = {r["key"]: r for r in pq.read_table(ann / "00000.parquet").to_pylist()}
        assert rows["dark"]["captions"] == ["an echo of grey 10"] and rows["light"]["captioner"] == "echo:toy"
        assert abs(rows["light"]["brightness"] - 245) < 3

        # the strategy cuts on the annotator's score; the dry run shows every strategy beside it
        capsys.readouterr()
        assert cli("mix", shards, "-a", ann, "--strategy", "bright", "--threshold", 100, "--dry-run",
                   "--json") == 0
        dry = json.loads(capsys.readouterr().out)
        assert dry["threshold_column"] == "brightness" and dry["counts"]["written"] == 2
        side = {r["strategy"]: r for r in dry["strategies"]}
        assert side["bright"]["kept"] == 2 and side["raw"]["threshold_column"] == "clip_raw"
        assert cli("mix", shards, "-a", ann, "-o", out, "--strategy", "bright", "--fraction", 0.5,
                   "--engine", "serial", "-q") == 0
        kept = json.loads((out / "_summary.json").read_text())["counts"]
        assert kept["written"] == 2 and kept["dropped_by_reason"] == {"mix: brightness below threshold": 1}
        # another strategy's dry run reads the toy's column too (it once failed with a KeyError)
        capsys.readouterr()
        assert cli("mix", shards, "-a", ann, "--strategy", "raw", "--dry-run", "--json") == 0
        assert {r["strategy"] for r in json.loads(capsys.readouterr().out)["strategies"]} >= {"raw", "bright"}
    assert "bright" not in mixing.STRATEGIES and "echo" not in BACKENDS and "serial" not in engines.ENGINES


def test_a_strategy_on_a_score_a_folder_lacks_is_one_line(shards, tmp_path, capsys):
    with registered("built in", tmp_path):
        ann = tmp_path / "ann"
        assert cli("score", shards, "-a", ann, "--no-clip", "--no-sieve", "-q") == 0
        capsys.readouterr()
        assert cli("mix", shards, "-a", ann, "--strategy", "bright", "--threshold", 1, "--dry-run") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "has no brightness scores (the brightness group was not computed)" in err[0]
        assert "--brightness" in err[0]
        # the other strategies' dry run still works there: the toy's row reads as unscored
        assert cli("mix", shards, "-a", ann, "--strategy", "raw", "--dry-run", "--json") == 0
        side = {r["strategy"]: r for r in json.loads(capsys.readouterr().out)["strategies"]}
        assert "note" in side["bright"] and side["raw"]["kept"] == 3
